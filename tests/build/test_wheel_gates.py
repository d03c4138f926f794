"""ci/wheel.py's choices and gates on recorded and crafted inputs: which rows a wheel gets, cuobjdump's listings,
auditwheel's verdict against the glibc floor, the size budget, manifests against rows and commits, and
cmake/prebuilt.cmake installing exactly the listed staged files. No compiler or toolkit is needed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci import build_variant, matrix, wheel

from conftest import ROOT, cmake_binaries, require_tool

DATA = Path(__file__).parent / "data"
VARIANTS = matrix.load()
PLAT = "linux-x86_64"


# ----------------------------------------------------------------------------------------- selection

def test_rows_without_a_toolkit_here_are_skipped_with_one_line_saying_where_they_are_built():
    sel = wheel.select(VARIANTS, PLAT, None, has_toolkit=lambda v: v.name == "cuda130")
    assert [v.name for v in sel.build] == ["cpu", "cuda130"]
    lines = dict(line.split(":", 1) for line in sel.skipped)
    assert set(lines) == {"skip cuda118", "skip cuda124", "skip cuda128"}
    assert "release pipeline" in lines["skip cuda128"] and "no toolkit_source" in lines["skip cuda128"]
    assert "--provision" in lines["skip cuda124"] and "KBIT_CUDA_HOME_124" in lines["skip cuda124"]
    assert all("\n" not in line for line in sel.skipped)


def test_a_row_asked_for_by_name_is_built_even_without_its_toolkit():
    sel = wheel.select(VARIANTS, PLAT, ("cpu", "cuda128"), has_toolkit=lambda v: False)
    assert [v.name for v in sel.build] == ["cpu", "cuda128"] and not sel.skipped


def test_asking_for_cuda128_by_name_fails_with_the_toolkit_not_found_message(monkeypatch, tmp_path):
    for key in ("KBIT_CUDA_HOME_128", "CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvcc 12.8 on PATH (this machine has none anyway)
    with pytest.raises(build_variant.ToolkitNotFoundError) as info:
        wheel.run(provision=False, names=("cpu", "cuda128"), prebuilt=None, dist=tmp_path, log=lambda s: None)
    assert "needs the CUDA 12.8 toolkit" in str(info.value) and "NVIDIA's toolkit" in str(info.value)


@pytest.mark.parametrize("names, words", [(("cuda130",), "must include cpu"), (("cpu", "cuda999"), "not rows"),
                                          (("cpu", "cuda118"), None)])
def test_bad_variant_lists_are_refused(names, words):
    if words is None:  # cuda118 is not built for aarch64
        with pytest.raises(wheel.WheelError, match="not built for linux-aarch64"):
            wheel.select(VARIANTS, "linux-aarch64", names, has_toolkit=lambda v: True)
        return
    with pytest.raises(wheel.WheelError, match=words):
        wheel.select(VARIANTS, PLAT, names, has_toolkit=lambda v: True)


# ----------------------------------------------------------------------------------------- cuobjdump

ELF = """
Fatbin elf code:
================
ELF file    1: kbit_cuda130.1.sm_75.cubin
ELF file    2: kbit_cuda130.2.sm_80.cubin
ELF file    3: kbit_cuda130.3.sm_80.cubin
ELF file    4: kbit_cuda130.4.sm_120.cubin
"""
PTX = "PTX file    1: kbit_cuda130.1.sm_120.ptx\n"


def test_cuobjdump_listings_are_compared_as_sets_of_sm_names():
    assert wheel.cuobjdump_archs(ELF, PTX) == ({75, 80, 120}, {120})


def test_a_library_whose_fatbin_differs_from_its_row_names_what_is_missing_and_extra():
    row = VARIANTS["cuda130"]
    problems = wheel.arch_problems(row, {75, 80, 120, 87}, {90, 120})
    assert len(problems) == 2
    assert "missing [86, 89, 90, 100]" in problems[0] and "extra [87]" in problems[0]
    assert "PTX [90, 120]" in problems[1] and "exactly one, 120" in problems[1]
    assert wheel.arch_problems(row, set(row.sass), {row.ptx}) == []


# ----------------------------------------------------------------------------------------- auditwheel

def test_recorded_auditwheel_json_of_todays_libraries_fails_the_floor_with_the_evidence():
    audit = wheel.parse_audit_json((DATA / "auditwheel_show_main_2_34.json").read_text())
    assert audit.sym_tag == "manylinux_2_34_x86_64"
    problems = wheel.audit_problems(audit, "2.17", {"libkbit_cuda130.so": "needs glibc 2.34"})
    assert any("libgomp.so.1" in p and "whitelist" in p for p in problems)
    assert any("manylinux_2_34_x86_64, above the glibc floor 2.17" in p and "GLIBC_2.34" in p for p in problems)
    assert any("libkbit_cuda130.so: needs glibc 2.34" in p for p in problems)


def test_recorded_auditwheel_text_reads_the_same_verdict():
    audit = wheel.parse_audit_text((DATA / "auditwheel_show_main_2_34.txt").read_text())
    assert audit.sym_tag == "manylinux_2_34_x86_64" and audit.overall_tag == "linux_x86_64"
    assert wheel.audit_problems(audit, "2.17", {})


def _crafted(sym_tag: str, external: dict | None = None, glibc: list[str] | None = None) -> str:
    return json.dumps({"version": 1, "wheel": "kbit-0.1.0-py3-none-linux_x86_64.whl", "overall_tag": sym_tag,
                       "sym_tag": sym_tag, "external_libs": external or {},
                       "versioned_symbols": {"libc.so.6": glibc or ["GLIBC_2.2.5", "GLIBC_2.17"]}})


@pytest.mark.parametrize("sym_tag, floor, ok", [
    ("manylinux_2_17_x86_64", "2.17", True), ("manylinux_2_5_x86_64", "2.17", True),
    ("manylinux_2_24_x86_64", "2.17", False), ("manylinux_2_24_x86_64", "2.24", True),
    ("manylinux2014_x86_64", "2.17", True), ("linux_x86_64", "2.17", False)])
def test_the_floor_is_proved_only_when_auditwheel_allows_a_tag_at_or_below_it(sym_tag, floor, ok):
    problems = wheel.audit_problems(wheel.parse_audit_json(_crafted(sym_tag)), floor, {})
    assert (problems == []) is ok


def test_a_library_auditwheel_would_graft_fails_even_below_the_floor():
    audit = wheel.parse_audit_json(_crafted("manylinux_2_17_x86_64", {"libgomp.so.1": "/lib/libgomp.so.1"}))
    (problem,) = wheel.audit_problems(audit, "2.17", {})
    assert "libgomp.so.1" in problem and "graft" in problem


def test_the_policy_comes_from_the_floor_of_matrix_toml():
    floors = matrix.load_platforms()
    assert wheel.floor_policy(floors[PLAT].glibc_floor, PLAT) == f"manylinux_{floors[PLAT].glibc_floor.replace('.', '_')}_x86_64"
    assert wheel.floor_policy("2.24", "linux-aarch64") == "manylinux_2_24_aarch64"


# ----------------------------------------------------------------------------------------- size, manifests

def test_a_wheel_over_its_budget_is_refused_with_its_size(tmp_path):
    whl = tmp_path / "kbit-0.1.0-py3-none-linux_x86_64.whl"
    whl.write_bytes(b"x" * (2 * 2**20 + 1))
    (problem,) = wheel.size_problems(whl, 2)
    assert "2.00 MiB, over matrix.toml's wheel_budget_mib = 2" in problem
    assert wheel.size_problems(whl, 3) == []


def _manifest(**changes) -> dict:
    v = VARIANTS["cuda124"]
    info = {"abi": 1, "variant": v.name, "backend": "cuda", "toolkit": "12.4.131", "sass": list(v.sass), "ptx": v.ptx,
            "commit": "abc"}
    info.update(changes)
    return info


@pytest.mark.parametrize("changes, info_changes, words", [
    ({}, {}, None), ({"sass": [80, 90]}, None, "manifest sass is [80, 90]"), ({"toolkit": "12.6.20"}, None, "CUDA 12.6.20"),
    ({"commit": "old"}, None, "built from commit 'old'"), ({}, {"ptx": 80}, "different builds")])
def test_manifests_must_match_their_library_their_row_and_the_commit(changes, info_changes, words):
    manifest = _manifest(**changes)
    info = None if info_changes is None else {**manifest, **info_changes}
    problems = wheel.manifest_problems(VARIANTS["cuda124"], manifest, info, "abc")
    assert (problems == []) if words is None else any(words in p for p in problems)


def test_the_commit_is_computed_as_cmake_records_it():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "git rev-parse --short=12 HEAD" in cmake and "git diff --quiet HEAD -- csrc cmake CMakeLists.txt" in cmake
    assert wheel.current_commit().split("-")[0] == subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_a_prebuilt_folder_without_the_cpu_library_is_refused(tmp_path):
    (tmp_path / "kbit_cuda130.build.json").write_text("{}")
    with pytest.raises(wheel.WheelError, match="no kbit_cpu.build.json"):
        wheel.variants_in(tmp_path, VARIANTS, PLAT)
    (tmp_path / "kbit_cuda999.build.json").write_text("{}")
    with pytest.raises(wheel.WheelError, match="no row of matrix.toml"):
        wheel.variants_in(tmp_path, VARIANTS, PLAT)


# ----------------------------------------------------------------------------------------- cmake/prebuilt.cmake

def _configure_prebuilt(cmake: str, tmp_path: Path, staged: Path, files: str) -> subprocess.CompletedProcess:
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    require_tool("ninja", Path(ninja).is_file())
    # PATH holds no compiler: configuring must not look for one
    return subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "b"), "-G", "Ninja",
                           f"-DCMAKE_MAKE_PROGRAM={ninja}", f"-DKBIT_PREBUILT_DIR={staged}",
                           f"-DKBIT_PREBUILT_FILES={files}", f"-DCMAKE_INSTALL_PREFIX={tmp_path / 'prefix'}"],
                          capture_output=True, text=True, env={"PATH": "/nonexistent", "HOME": str(tmp_path)})


@pytest.mark.parametrize("cmake", cmake_binaries())
def test_prebuilt_installs_exactly_the_listed_files_without_a_compiler(cmake, tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("libkbit_cpu.so", "kbit_cpu.build.json", "stray.so"):
        (staged / name).write_bytes(b"\x7fELF" if name.endswith(".so") else b"{}")
    done = _configure_prebuilt(cmake, tmp_path, staged, "libkbit_cpu.so;kbit_cpu.build.json")
    assert done.returncode == 0, done.stdout + done.stderr  # PATH has no compiler: none was looked for
    subprocess.run([cmake, "--install", str(tmp_path / "b")], check=True, capture_output=True)
    installed = sorted(p.name for p in (tmp_path / "prefix" / "kbit").iterdir())
    assert installed == ["kbit_cpu.build.json", "libkbit_cpu.so"]


@pytest.mark.parametrize("cmake", cmake_binaries()[:1])
def test_prebuilt_names_a_listed_file_that_is_missing(cmake, tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    done = _configure_prebuilt(cmake, tmp_path, staged, "libkbit_cpu.so")
    assert done.returncode != 0 and "names libkbit_cpu.so, which is not in" in done.stderr


# ----------------------------------------------------------------------------------------- README

def test_the_readme_coverage_table_is_the_one_matrix_toml_generates():
    readme = (ROOT / "README.md").read_text()
    assert matrix.with_coverage_table(readme, matrix.coverage_table(VARIANTS)) == readme, \
        "README.md's coverage table is stale: run python ci/matrix.py coverage-table --write"


def test_the_coverage_table_follows_the_rows():
    table = matrix.coverage_table(VARIANTS).splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    cell = {(row.split("|")[1].strip(), head[i]): c.strip()
            for row in table[2:] for i, c in enumerate(row.strip("|").split("|")) if i}
    assert cell[("Maxwell sm_50", "cuda130 (CUDA 13.0)")] == "none"
    assert cell[("Maxwell sm_50", "cuda118 (CUDA 11.8)")] == "SASS"
    assert cell[("Blackwell RTX 50 sm_120", "cuda124 (CUDA 12.4)")] == "PTX-JIT"
    assert cell[("Blackwell RTX 50 sm_120", "cuda130 (CUDA 13.0)")] == "SASS"
    changed = dict(VARIANTS)
    changed["cuda130"] = matrix.Variant(**{**VARIANTS["cuda130"].__dict__, "sass": (75, 80), "ptx": 80})
    assert "| Hopper sm_90 | SASS | SASS | SASS | PTX-JIT |" in matrix.coverage_table(changed)


def test_portability_findings_become_gate_failures_for_every_staged_library(monkeypatch, tmp_path):
    import types
    from dataclasses import dataclass

    @dataclass
    class Problem:
        what: str
        fix: str

    fake = types.SimpleNamespace(PortabilityError=RuntimeError,
                                 check=lambda path, plat: [Problem(f"needs GLIBC_2.34 on {plat}", "link for the floor")]
                                 if "cuda" in path.name else [])
    import ci

    monkeypatch.setitem(sys.modules, "ci.portability", fake)
    monkeypatch.setattr(ci, "portability", fake, raising=False)  # also when the real module was imported already
    libs = [tmp_path / "libkbit_cpu.so", tmp_path / "libkbit_cuda130.so"]
    assert wheel.portability_problems(libs, PLAT) == [
        "libkbit_cuda130.so: needs GLIBC_2.34 on linux-x86_64. fix: link for the floor"]


def test_recorded_auditwheel_json_of_portable_libraries_proves_the_floor():
    # recorded on the wheel built with the portable link (CPU library without libgomp, glibc references pinned)
    audit = wheel.parse_audit_json((DATA / "auditwheel_show_with_link_2_17.json").read_text())
    assert audit.sym_tag == "manylinux_2_17_x86_64" and not audit.external_libs
    assert wheel.audit_problems(audit, "2.17", {"libkbit_cpu.so": "unused"}) == []
    assert wheel.audit_problems(audit, "2.12", {}) != []  # the same wheel does not prove an older floor
