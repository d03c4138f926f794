"""matrix.toml validation: the real file is valid; every bad row is refused with row, problem and fix."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ci import build_variant, cuda_catalog, matrix

GOOD_CUDA = """
[variants.cuda130]
backend = "cuda"
reason = "a row used by these tests"
platforms = ["linux-x86_64"]
host_compiler = "g++-12"
toolkit = "13.0"
release = "13.0.2"
sass = [75, 80, 120]
ptx = 120
compression = "size"
min_driver = "580.65.06"
"""
PLATFORMS = """
[platforms.linux-x86_64]
glibc_floor = "2.17"
wheel_budget_mib = 12
[platforms.linux-aarch64]
glibc_floor = "2.17"
wheel_budget_mib = 8
[platforms.win-amd64]
wheel_budget_mib = 12
"""
CPU = """
schema = 1
""" + PLATFORMS + """
[variants.cpu]
backend = "cpu"
reason = "serves CPU tensors in these tests"
platforms = ["linux-x86_64"]
host_compiler = "g++-12"
"""


def _doc(cuda_row: str = GOOD_CUDA, **edits: str) -> str:
    for old, new in edits.items():
        old = old.replace("__", " = ")
        assert old in cuda_row, old
        cuda_row = cuda_row.replace(old, new)
    return CPU + cuda_row


def _problems(text: str) -> list[matrix.Problem]:
    with pytest.raises(matrix.MatrixError) as info:
        matrix.parse(text)
    return info.value.problems


def test_the_real_matrix_is_valid_and_has_the_starting_rows():
    variants = matrix.load()
    assert {"cpu", "cuda118", "cuda124", "cuda128", "cuda130"} <= set(variants)
    for v in variants.values():
        if v.backend == "cuda":
            assert list(v.sass) == sorted(set(v.sass)) and v.ptx == max(v.sass)


def test_the_good_test_row_is_valid():
    assert matrix.parse(_doc())["cuda130"].cmake_archs == "75-real;80-real;120-real;120-virtual"


# (description, text, words every message must contain)
BAD_ROWS = [
    ("sm_70 on CUDA 13.0", _doc(**{"sass = [75, 80, 120]": "sass = [70, 75, 80, 120]"}),
     ["cuda130", "sm_70", "13.0", "fix", "remove sm_70"]),
    ("sm_50 and sm_60 on CUDA 13.0", _doc(**{"sass = [75, 80, 120]": "sass = [50, 60, 75, 80, 120]"}),
     ["sm_50, sm_60", "13.0"]),
    ("sm_100 before 12.8",
     _doc(**{'toolkit = "13.0"': 'toolkit = "12.4"', "cuda130]": "cuda124]", '"size"': '"all"',
             "sass = [75, 80, 120]": "sass = [75, 80, 100]", "ptx = 120": "ptx = 100"}),
     ["cuda124", "sm_100", "12.4"]),
    ("sm_120 before 12.8",
     _doc(**{'toolkit = "13.0"': 'toolkit = "12.6"', "cuda130]": "cuda126]", '"size"': '"all"'}),
     ["cuda126", "sm_120", "12.6"]),
    ("PTX not the newest", _doc(**{"ptx = 120": "ptx = 80"}), ["PTX arch 80 is not the newest", "ptx = 120"]),
    ("PTX missing", _doc(**{"ptx = 120\n": ""}), ["missing key 'ptx'"]),
    ("duplicate arch", _doc(**{"sass = [75, 80, 120]": "sass = [75, 80, 80, 120]"}), ["sm_80 more than once"]),
    ("unordered archs", _doc(**{"sass = [75, 80, 120]": "sass = [80, 75, 120]"}), ["ascending", "[75, 80, 120]"]),
    ("arch as a string", _doc(**{"sass = [75, 80, 120]": 'sass = ["sm_75"]'}), ["integers"]),
    ("unknown key", _doc(**{'min_driver = "580.65.06"': 'min_driver = "580.65.06"\narches = [1]'}),
     ["unknown key 'arches'", "sass"]),
    ("name does not match toolkit", _doc(**{"cuda130]": "cuda124]"}), ["cuda124", "[variants.cuda130]"]),
    ("unknown toolkit", _doc(**{'toolkit = "13.0"': 'toolkit = "13.9"', "cuda130]": "cuda139]"}),
     ["13.9", "ci/cuda_catalog.py"]),
    ("size compression on 12.x",
     _doc(**{'toolkit = "13.0"': 'toolkit = "12.8"', "cuda130]": "cuda128]"}), ['"size"', "12.8", '"all"']),
    ("bad compression", _doc(**{'"size"': '"max"'}), ["compression is 'max'"]),
    ("bad platform", _doc(**{'["linux-x86_64"]\nhost': '["linux-riscv64"]\nhost'}), ["platforms", "linux-aarch64"]),
    ("bad driver", _doc(**{'"580.65.06"': '"latest"'}), ["min_driver"]),
    ("missing reason", _doc(**{'reason = "a row used by these tests"\n': ""}), ["missing key 'reason'"]),
    ("unpinned pypi source",
     _doc(**{'min_driver = "580.65.06"': 'min_driver = "580.65.06"\ntoolkit_source = { pypi = ["nvidia-cuda-nvcc"] }'}),
     ["toolkit_source.pypi", "pin"]),
    ("bad backend", _doc(**{'backend = "cuda"': 'backend = "rocm"'}), ["backend is 'rocm'"]),
    ("duplicated row (TOML)", _doc() + GOOD_CUDA, ["not valid TOML", "defined twice"]),
    ("second cpu row", _doc() + "[variants.cpu2]" + CPU.split("[variants.cpu]")[1],
     ["exactly one CPU row"]),
]


@pytest.mark.parametrize("text,words", [pytest.param(t, w, id=d) for d, t, w in BAD_ROWS])
def test_bad_rows_are_refused_with_row_problem_and_fix(text, words):
    problems = _problems(text)
    message = str(matrix.MatrixError(matrix.MATRIX_PATH, problems))
    for word in words:
        assert word in message, f"{word!r} not in:\n{message}"
    assert all(p.fix for p in problems)


def test_every_problem_is_reported_at_once():
    text = _doc(**{"sass = [75, 80, 120]": "sass = [70, 80, 75]", '"size"': '"max"'})
    whats = " | ".join(p.what for p in _problems(text))
    assert "sm_70" in whats and "ascending" in whats and "compression" in whats


def test_unknown_top_level_key_and_schema():
    problems = _problems("schema = 2\ncolour = 1\n" + CPU.replace("schema = 1", ""))
    text = " ".join(p.what for p in problems)
    assert "schema is 2" in text and "'colour'" in text


def test_the_real_platform_floors_are_at_most_manylinux_2_24():
    plats = matrix.load_platforms()
    assert set(plats) == set(matrix.PLATFORMS)
    for p in plats.values():
        if p.name.startswith("linux"):
            assert tuple(map(int, p.glibc_floor.split("."))) <= (2, 24)
        assert p.wheel_budget_mib > 0


@pytest.mark.parametrize("edit, words", [
    (('glibc_floor = "2.17"\nwheel_budget_mib = 12', 'glibc_floor = "2.34"\nwheel_budget_mib = 12'),
     ["[platforms.linux-x86_64]", "above 2.24"]),
    (("wheel_budget_mib = 8", "wheel_budget_mib = 0"), ["[platforms.linux-aarch64]", "wheel_budget_mib is 0"]),
    (("[platforms.win-amd64]\n", '[platforms.win-amd64]\nglibc_floor = "2.17"\n'), ["without glibc"]),
    (("[platforms.win-amd64]\nwheel_budget_mib = 12\n", ""), ["one [platforms.<name>] table for each"]),
    (("wheel_budget_mib = 8", "wheel_budget_mib = 8\ncolour = 1"), ["unknown key 'colour'"]),
])
def test_bad_platform_tables_are_refused_with_the_fix(edit, words):
    text = _doc()
    assert edit[0] in text
    message = str(matrix.MatrixError(matrix.MATRIX_PATH, _problems(text.replace(edit[0], edit[1], 1))))
    for word in words:
        assert word in message, f"{word!r} not in:\n{message}"


def test_cli_check_refuses_sm70_on_cuda13_before_anything_runs(tmp_path):
    bad = tmp_path / "matrix.toml"
    bad.write_text(_doc(**{"sass = [75, 80, 120]": "sass = [70, 75, 80, 120]"}))
    done = subprocess.run([sys.executable, str(matrix.ROOT / "ci" / "matrix.py"), "--matrix", str(bad), "check"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "[variants.cuda130] CUDA 13.0 cannot compile for sm_70" in done.stderr
    assert "nvcc fatal" not in done.stderr


def test_build_refuses_a_bad_matrix_before_cmake_is_called(tmp_path):
    """The user meets our message, never CMake's `nvcc fatal : Unsupported gpu architecture 'compute_70'`."""
    bad = tmp_path / "matrix.toml"
    bad.write_text(_doc(**{"sass = [75, 80, 120]": "sass = [70, 75, 80, 120]"}))
    marker = tmp_path / "cmake-was-called"
    fake_cmake = tmp_path / "cmake"
    fake_cmake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_cmake.chmod(0o755)
    with pytest.raises(matrix.MatrixError, match="cannot compile for sm_70"):
        build_variant.build("cuda130", matrix_path=bad, cmake=str(fake_cmake), build_root=tmp_path / "b")
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_cmake_args_are_derived_from_the_row():
    v = matrix.load()["cuda130"]
    args = matrix.cmake_args(v)
    assert f"-DKBIT_CUDA_ARCHS={';'.join(f'{a}-real' for a in v.sass)};{v.ptx}-virtual" in args
    assert f"-DKBIT_CUDA_TOOLKIT={v.toolkit}" in args and "-DKBIT_VARIANT=cuda130" in args
    sub = matrix.cmake_args(v, (80,))
    assert "-DKBIT_CUDA_ARCHS=80-real;80-virtual" in sub


def test_catalog_agrees_with_the_real_nvcc():
    """ci/cuda_catalog.py is authored; the toolkit on this machine is the evidence it must match."""
    from conftest import require_tool

    v = matrix.load()["cuda130"]
    try:
        nvcc = build_variant.find_toolkit(v)
    except build_variant.ToolkitNotFoundError:
        nvcc = None
    require_tool("a CUDA 13.0 nvcc", nvcc)
    out = subprocess.run([str(nvcc), "--list-gpu-code"], capture_output=True, text=True, check=True).stdout
    offered = tuple(sorted(int(x) for x in out.replace("sm_", " ").split()))
    assert tuple(sorted(cuda_catalog.toolkit_archs("13.0").sass)) == offered


def test_versions_compare_as_numbers():
    assert cuda_catalog.version_tuple("11.10") > cuda_catalog.version_tuple("11.7")


def test_a_missing_toolkit_says_where_it_looked_and_how_to_provide_one(monkeypatch, tmp_path):
    monkeypatch.setenv("KBIT_CUDA_HOME_128", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CUDA_HOME", "/usr/local/cuda-13.0")
    with pytest.raises(build_variant.ToolkitNotFoundError) as info:
        build_variant.find_toolkit(matrix.load()["cuda128"])
    text = str(info.value)
    assert "build-cuda128 needs the CUDA 12.8 toolkit" in text
    assert f"$KBIT_CUDA_HOME_128: {tmp_path / 'nothing-here'}: no bin/nvcc" in text
    if __import__("os").path.isfile("/usr/local/cuda-13.0/bin/nvcc"):
        assert "$CUDA_HOME: /usr/local/cuda-13.0/bin/nvcc reports CUDA 13.0, not 12.8" in text
    assert "set KBIT_CUDA_HOME_128=" in text and "not obtainable from PyPI or Debian" in text


def test_a_fetchable_toolkit_points_at_its_nox_session(monkeypatch, tmp_path):
    monkeypatch.setenv("KBIT_CUDA_HOME_124", str(tmp_path))
    monkeypatch.setattr(build_variant, "TOOLKITS_DIR", tmp_path / "none")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    variant = matrix.load()["cuda124"]
    if any(home.joinpath("bin", "nvcc").is_file() and build_variant.nvcc_release(home / "bin" / "nvcc") == "12.4"
           for _, home in build_variant._candidates(variant)):
        pytest.skip("this machine has CUDA 12.4 at a default place")
    with pytest.raises(build_variant.ToolkitNotFoundError, match=r"run `nox -s toolkit-cuda124`"):
        build_variant.find_toolkit(variant)


# ------------------------------------------------------------------ build manifests against the matrix

def _good_manifest(row: matrix.Variant) -> dict:
    return {"abi": 2, "variant": row.name, "backend": "cuda", "toolkit": f"{row.toolkit}.88", "sass": list(row.sass),
            "ptx": row.ptx, "min_driver": row.min_driver, "compression": row.compression}


def test_manifest_problems_find_every_kind_of_drift():
    row = matrix.load()["cuda130"]
    good = _good_manifest(row)
    assert matrix.manifest_problems(row, good) == []
    assert matrix.manifest_problems(row, {**good, "sass": [80], "ptx": 80}) == []  # an --archs subset build
    assert matrix.manifest_problems(row, {**good, "sass": [70, 75]})[0].startswith("sass [70, 75]")  # sm_70: not in row
    assert matrix.manifest_problems(row, {**good, "sass": [80], "ptx": 75})  # a subset's PTX is its newest arch
    assert matrix.manifest_problems(row, {**good, "toolkit": "12.8.93"}) == [f"toolkit 12.8.93 vs {row.toolkit}"]
    assert matrix.manifest_problems(row, {**good, "min_driver": "570.26"})[0].startswith("min_driver/compression")
    assert matrix.manifest_problems(row, {**good, "variant": "cuda128"})
    assert "-DKBIT_MIN_DRIVER=" + row.min_driver in matrix.cmake_args(row)
    cpu = matrix.load()["cpu"]
    cpu_info = {"variant": "cpu", "backend": "cpu", "sass": [], "ptx": None, "toolkit": None}
    assert matrix.manifest_problems(cpu, cpu_info) == []
    assert matrix.manifest_problems(cpu, {**cpu_info, "sass": [80]})


def test_every_build_refuses_a_manifest_that_drifted_or_differs_from_the_library(tmp_path):
    row = matrix.load()["cuda130"]
    library = tmp_path / "libkbit_cuda130.so"
    manifest = tmp_path / "kbit_cuda130.build.json"
    good = _good_manifest(row)
    manifest.write_text(json.dumps(good))
    build_variant.check_manifest(row, library, good, list(row.sass))  # agrees: no error
    drifted = {**good, "min_driver": "570.26"}
    manifest.write_text(json.dumps(drifted))
    with pytest.raises(build_variant.BuildError, match="drifted from matrix.toml's cuda130 row: min_driver"):
        build_variant.check_manifest(row, library, drifted, list(row.sass))
    with pytest.raises(build_variant.BuildError, match="but .* reports"):
        build_variant.check_manifest(row, library, good, list(row.sass))  # the file says another thing
    manifest.write_text(json.dumps(good))
    with pytest.raises(build_variant.BuildError, match="not what was asked for"):
        build_variant.check_manifest(row, library, good, [80])


# ---------------------------------------------------------------- platform_sass (a platform's own SASS list)

AARCH64_ROW = GOOD_CUDA.replace('platforms = ["linux-x86_64"]', 'platforms = ["linux-x86_64", "linux-aarch64"]')


def test_platform_sass_adds_archs_on_that_platform_only():
    v = matrix.parse(CPU + AARCH64_ROW.replace("ptx = 120", "platform_sass = { linux-aarch64 = [87, 110] }\nptx = 120"))[
        "cuda130"]
    assert v.on("linux-aarch64").sass == (75, 80, 87, 110, 120) and v.on("linux-x86_64").sass == (75, 80, 120)
    assert "-DKBIT_CUDA_ARCHS=75-real;80-real;87-real;110-real;120-real;120-virtual" in matrix.cmake_args(
        v.on("linux-aarch64"))


def test_the_real_aarch64_cuda130_list_has_orin_and_thor():
    v = matrix.load()["cuda130"]
    assert {87, 110} <= set(v.on("linux-aarch64").sass) and not {87, 110} & set(v.sass)


@pytest.mark.parametrize("extra, message", [
    ("{ win-amd64 = [87] }", "platform_sass names win-amd64, which the row does not build for"),
    ("{ linux-aarch64 = [80, 87] }", "repeats the row's archs"),
    ("{ linux-aarch64 = [62] }", "CUDA 13.0 cannot compile for sm_62 (platform_sass.linux-aarch64)"),
    ("{ linux-aarch64 = [121] }", "adds sm_121, newer than the PTX arch 120"),
    ("[87]", "platform_sass is [87]"),
])
def test_a_bad_platform_sass_is_refused(extra, message):
    problems = _problems(CPU + AARCH64_ROW.replace("ptx = 120", f"platform_sass = {extra}\nptx = 120"))
    assert any(message in str(p) for p in problems), [str(p) for p in problems]


@pytest.mark.parametrize("release", ['"12.4.1"', '"13.0"', "13"])
def test_a_release_that_is_not_the_toolkits_is_refused(release):
    problems = _problems(_doc(**{'release__"13.0.2"': f"release = {release}"}))
    assert any("not a full release of CUDA 13.0" in str(p) for p in problems), [str(p) for p in problems]
