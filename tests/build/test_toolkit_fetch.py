"""Fast, offline tests of ci/toolkit_fetch.py and ci/toolkits/: text generation, parsers, layout and marker logic.

Nothing here touches the network, apt or pip; trees are fakes made in tmp_path.
"""

from __future__ import annotations

import os
import pathlib
import time

import pytest

from ci import toolkit_fetch as tf
from ci.toolkits import apt, debian_home, errors, host_compiler, nvcc, pypi_home, tree

ROOT = pathlib.Path(__file__).resolve().parents[2]



SYSTEM_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NVCC_124 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Thu_Mar_28_02:18:24_PDT_2024
Cuda compilation tools, release 12.4, V12.4.131
Build cuda_12.4.r12.4/compiler.34097967_0
"""
NVCC_118 = "Cuda compilation tools, release 11.8, V11.8.89\nBuild cuda_11.8.r11.8/compiler.31833905_0\n"
NVCC_130 = "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler.36424714_0\n"

SOURCE_124 = {
    "debian": {"suite": "trixie",
               "packages": ["nvidia-cuda-toolkit=12.4.131~12.4.1-2", "nvidia-cuda-dev=12.4.127~12.4.1-2"]},
    "pypi": ["nvidia-cuda-cccl-cu12==12.4.127.post1"],
}


# ----------------------------------------------------------------------------------------- apt sources


def test_deb822_source_text_is_the_toolchains_recipe():
    text = apt.deb822_source_text(["http://deb.debian.org/debian"], "trixie")
    assert text == (
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: trixie\n"
        "Components: main contrib non-free\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    # It must parse back as one stanza.
    assert apt.parse_deb822(text) == [{"Types": "deb", "URIs": "http://deb.debian.org/debian", "Suites": "trixie",
                                      "Components": "main contrib non-free",
                                      "Signed-By": "/usr/share/keyrings/debian-archive-keyring.gpg"}]


def test_archive_uris_skip_security_and_disabled_entries():
    entries = apt.parse_deb822(SYSTEM_SOURCES)
    entries.append({"Types": "deb", "URIs": "http://mirror.example/debian/", "Suites": "bookworm", "Enabled": "no"})
    entries.append({"Types": "deb-src", "URIs": "http://src.example/debian", "Suites": "bookworm"})
    assert apt.debian_archive_uris(entries) == ["http://deb.debian.org/debian"]


def test_one_line_sources_with_options():
    text = "# comment\ndeb [signed-by=/k.gpg arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n" \
           "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    entries = apt.parse_one_line_sources(text)
    assert entries[0]["URIs"] == "http://ftp.de.debian.org/debian/"
    assert apt.debian_archive_uris(entries) == ["http://ftp.de.debian.org/debian/"]


def test_system_debian_uris_reads_only_sources_and_list_files(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(SYSTEM_SOURCES)
    (d / "other.sources.disabled-by-farm").write_text("Types: deb\nURIs: http://x.example/debian\nSuites: a\n")
    (d / "extra.list").write_text("deb http://y.example/debian bookworm main\n")
    uris = apt.system_debian_uris(tmp_path / "sources.list", d)
    assert uris == ["http://deb.debian.org/debian", "http://y.example/debian"]


def test_system_debian_uris_error_names_paths_and_fix(tmp_path):
    with pytest.raises(errors.ToolkitFetchError) as info:
        apt.system_debian_uris(tmp_path / "sources.list", tmp_path / "none.d")
    message = str(info.value)
    assert "find Debian mirror failed" in message and str(tmp_path) in message and "fix:" in message


def test_apt_options_point_away_from_system_state(tmp_path):
    opts = apt.apt_options(tmp_path)
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    assert all(flag == "-o" for flag in opts[::2])
    assert pairs["Dir::State::status"] == "/dev/null"
    assert pairs["Dir::Etc::SourceList"] == "/dev/null"
    assert pairs["Dir::Etc::SourceParts"] == str(tmp_path / "sources")
    assert pairs["Dir::State::Lists"] == str(tmp_path / "lists")
    assert pairs["Dir::Cache"] == str(tmp_path / "cache")


def test_package_specs_and_deb_filenames():
    assert apt.parse_package_spec("nvidia-cuda-dev=12.4.127~12.4.1-2") == ("nvidia-cuda-dev", "12.4.127~12.4.1-2")
    assert apt.parse_package_spec("libcudart12") == ("libcudart12", None)
    with pytest.raises(errors.ToolkitFetchError):
        apt.parse_package_spec("nvidia-cuda-dev=")
    assert apt.deb_filename_glob("libgmp10", "2:6.2.1+dfsg1-1.1") == "libgmp10_2%3a6.2.1+dfsg1-1.1_*.deb"


def test_unknown_debian_package_is_refused_with_fix():
    assert debian_home.deb_members("libcudart11.0") == ("./usr/lib/x86_64-linux-gnu/libcudart.so*",)
    with pytest.raises(errors.ToolkitFetchError) as info:
        debian_home.deb_members("nvidia-profiler")
    assert "DEB_MEMBERS" in str(info.value)


# ------------------------------------------------------------------------------------ Debian deps (pure)


def test_parse_depends_alternatives_versions_and_arch_qualifiers():
    groups = apt.parse_depends("gcc-11-base (= 11.3.0-12), libc6 (>= 2.34), python3:any, g++-13 | clang-17")
    assert groups[0] == [apt.Dependency("gcc-11-base", "=", "11.3.0-12")]
    assert groups[2] == [apt.Dependency("python3")]
    assert [d.name for d in groups[3]] == ["g++-13", "clang-17"]


def _fake_archive():
    records = {
        "g++-11": "gcc-11-base (= 11.3.0-12), gcc-11 (= 11.3.0-12), libstdc++-11-dev (= 11.3.0-12), libc6 (>= 2.34)",
        "gcc-11": "cpp-11 (= 11.3.0-12), gcc-11-base (= 11.3.0-12), binutils (>= 2.40), libgcc-11-dev (= 11.3.0-12)",
        "cpp-11": "gcc-11-base (= 11.3.0-12), libc6 (>= 2.34)",
        "libgcc-11-dev": "gcc-11-base (= 11.3.0-12), libgomp1 (>= 11.3.0-12), libasan6 (>= 11.3.0-12)",
        "libstdc++-11-dev": "gcc-11-base (= 11.3.0-12), libstdc++6 (>= 11.3.0-12)",
        "gcc-11-base": "",
        "libasan6": "gcc-11-base (= 11.3.0-12)",
        "libgomp1": "",
    }
    installed = {"libc6": "2.36", "binutils": "2.40", "libgomp1": "12.2.0", "libstdc++6": "12.2.0"}

    def show(name):
        return {"Version": "11.3.0-12", "Depends": records[name]} if name in records else None

    def satisfies(have, op, want):  # enough for these numbers: compare dotted prefixes numerically
        def key(v):
            return [int(x) for x in v.split("-")[0].split(".")]
        return {">=": key(have) >= key(want), "=": have == want}[op]

    return show, installed.get, satisfies


def test_resolve_missing_fetches_only_what_the_system_lacks():
    show, installed, satisfies = _fake_archive()
    chosen = apt.resolve_missing(["g++-11"], show=show, installed=installed, satisfies=satisfies)
    assert sorted(chosen) == ["cpp-11", "g++-11", "gcc-11", "gcc-11-base", "libasan6", "libgcc-11-dev",
                              "libstdc++-11-dev"]


def test_resolve_missing_errors_when_nothing_satisfies():
    show, installed, satisfies = _fake_archive()
    with pytest.raises(errors.ToolkitFetchError) as info:
        apt.resolve_missing(["g++-11"], show=show, installed=lambda n: None if n == "binutils" else installed(n),
                           satisfies=satisfies)
    assert "binutils (>= 2.40)" in str(info.value)


def test_implied_runtime_package_comes_from_nvidia_cuda_dev_depends():
    def show(spec):
        assert spec == "nvidia-cuda-dev=12.4.127~12.4.1-2"
        return {"Version": "12.4.127~12.4.1-2",
                "Depends": "libcudart12 (= 12.4.127~12.4.1-2), libnvvm4 (= 12.4.127~12.4.1-2)"}

    specs = SOURCE_124["debian"]["packages"]
    assert debian_home.implied_runtime_packages(specs, show) == ["libcudart12=12.4.127~12.4.1-2"]
    assert debian_home.implied_runtime_packages(specs + ["libcudart12=1"], show) == []


# ------------------------------------------------------------------------------------------ layout


def _fake_extracted(root: pathlib.Path) -> list[pathlib.Path]:
    tk, dev, rt = root / "nvidia-cuda-toolkit", root / "nvidia-cuda-dev", root / "libcudart12"
    for src_rel, _ in debian_home.DEBIAN_LAYOUT:
        base = dev if src_rel.startswith(("usr/include", "usr/lib/x86_64")) else tk
        path = base / src_rel
        if src_rel.endswith(("crt", "libdevice", "include")):
            path.mkdir(parents=True)
            (path / "placeholder").write_text("x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    (dev / "usr/include/cuda_runtime.h").write_text("x")
    (dev / "usr/lib/x86_64-linux-gnu/libcudart.so").symlink_to("libcudart.so.12")
    (rt / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (rt / "usr/lib/x86_64-linux-gnu/libcudart.so.12.4.127").write_text("x")
    (rt / "usr/lib/x86_64-linux-gnu/libcudart.so.12").symlink_to("libcudart.so.12.4.127")
    (tk / "usr/lib/nvidia-cuda-toolkit/bin/nvcc.profile").symlink_to("/etc/nvcc.profile")
    return [tk, dev, rt]


def test_assemble_debian_home(tmp_path):
    roots = _fake_extracted(tmp_path / "staging")
    home = tmp_path / "home"
    debian_home.assemble_debian_home(roots, home, log=lambda m: None)
    for rel in tree.REQUIRED_FILES:
        assert (home / rel).exists(), rel
    assert (home / "lib64/libcudart.so").resolve() == (home / "lib64/libcudart.so.12.4.127")
    assert (home / "lib64/stubs/libcuda.so").is_file()
    assert not (home / "bin/nvcc.profile").is_symlink()
    assert (home / "bin/nvcc.profile").read_text() == debian_home.NVCC_PROFILE_TEXT


def test_assemble_drops_a_dangling_libcudart_link(tmp_path):
    roots = _fake_extracted(tmp_path / "staging")[:2]
    messages = []
    debian_home.assemble_debian_home(roots, tmp_path / "home", log=messages.append)
    assert not os.path.lexists(tmp_path / "home/lib64/libcudart.so")
    assert any("dangling" in m for m in messages)


def test_assemble_names_the_missing_file(tmp_path):
    roots = _fake_extracted(tmp_path / "staging")
    (roots[0] / "usr/bin/ptxas").unlink()
    with pytest.raises(errors.ToolkitFetchError) as info:
        debian_home.assemble_debian_home(roots, tmp_path / "home", log=lambda m: None)
    assert "usr/bin/ptxas" in str(info.value) and "DEBIAN_LAYOUT" in str(info.value)


def test_nvcc_profile_is_relative_to_here():
    text = debian_home.NVCC_PROFILE_TEXT
    assert "TOP              = $(_HERE_)/.." in text
    assert "NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice" in text
    assert "$(TOP)/nvvm/bin" in text and '"-I$(TOP)/include"' in text
    assert '"-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"' in text
    assert "/usr" not in text.replace("(Debian's points at /usr)", "")


def test_link_wheel_cuda_home(tmp_path):
    home = tmp_path / "nvidia" / "cu13"
    (home / "bin").mkdir(parents=True)
    (home / "bin/nvcc").write_text("x")
    (home / "include").mkdir()
    (home / "lib").mkdir()
    (home / "lib/libcudart.so.13").write_text("x")
    assert pypi_home.find_wheel_cuda_home(tmp_path) == home
    pypi_home.link_wheel_cuda_home(home)
    assert os.readlink(home / "lib64") == "lib"
    assert (home / "targets/x86_64-linux/include").resolve() == (home / "include").resolve()
    assert (home / "targets/x86_64-linux/lib/libcudart.so").resolve() == (home / "lib/libcudart.so.13").resolve()


def test_find_wheel_cuda_home_explains_cu12(tmp_path):
    (tmp_path / "nvidia/cuda_nvcc/bin").mkdir(parents=True)
    (tmp_path / "nvidia/cuda_nvcc/bin/ptxas").write_text("x")
    with pytest.raises(errors.ToolkitFetchError) as info:
        pypi_home.find_wheel_cuda_home(tmp_path)
    assert "nvidia-cuda-nvcc-cu12 has no nvcc" in str(info.value)


def test_merge_headers_skips_python_files(tmp_path):
    src = tmp_path / "wheel/include"
    (src / "nv").mkdir(parents=True)
    (src / "nv/target").write_text("x")
    (src / "__init__.py").write_text("")
    (src / "__pycache__").mkdir()
    include = tmp_path / "include"
    include.mkdir()
    assert pypi_home.merge_headers(src, include) == ["nv"]
    assert (include / "nv/target").is_file() and not (include / "__init__.py").exists()


def test_cached_wheel_normalises_names(tmp_path):
    wheel = tmp_path / "nvidia_cuda_cccl_cu12-12.4.127.post1-py3-none-manylinux2014_x86_64.whl"
    wheel.write_text("x")
    assert pypi_home.cached_wheel(tmp_path, "nvidia-cuda-cccl-cu12==12.4.127.post1") == wheel
    assert pypi_home.cached_wheel(tmp_path, "nvidia-cuda-cccl-cu12==12.4.127") is None
    assert pypi_home.cached_wheel(tmp_path, "nvidia-cuda-cccl-cu12") is None


def test_fix_dangling_links_points_at_system_files(tmp_path):
    system = tmp_path / "system"
    (system / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (system / "usr/lib/x86_64-linux-gnu/libstdc++.so.6").write_text("x")
    tree = tmp_path / "tree"
    gccdir = tree / "usr/lib/gcc/x86_64-linux-gnu/11"
    gccdir.mkdir(parents=True)
    (gccdir / "libstdc++.so").symlink_to("../../../x86_64-linux-gnu/libstdc++.so.6")
    (gccdir / "libnothing.so").symlink_to("../../../x86_64-linux-gnu/libnothing.so.1")
    fixed = host_compiler.fix_dangling_links(tree, system)
    assert len(fixed) == 1
    assert os.readlink(gccdir / "libstdc++.so") == str(system / "usr/lib/x86_64-linux-gnu/libstdc++.so.6")
    assert os.path.islink(gccdir / "libnothing.so")


# ------------------------------------------------------------------------------------------ versions


@pytest.mark.parametrize("text, expected", [(NVCC_124, ("12.4", "12.4.131")), (NVCC_118, ("11.8", "11.8.89")),
                                            (NVCC_130, ("13.0", "13.0.88"))])
def test_parse_nvcc_release(text, expected):
    assert nvcc.parse_nvcc_release(text) == expected


def test_parse_nvcc_release_rejects_other_output():
    with pytest.raises(errors.ToolkitFetchError) as info:
        nvcc.parse_nvcc_release("gcc (Debian 12.2.0-14) 12.2.0\n")
    assert "check nvcc version failed" in str(info.value) and "gcc (Debian" in str(info.value)


def _fake_nvcc(home: pathlib.Path, output: str) -> None:
    (home / "bin").mkdir(parents=True, exist_ok=True)
    script = home / "bin/nvcc"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + output + "EOF\n")
    script.chmod(0o755)


def test_check_nvcc_version_mismatch_names_what_it_reported(tmp_path):
    _fake_nvcc(tmp_path, NVCC_124)
    assert nvcc.check_nvcc_version(tmp_path, "12.4") == "Cuda compilation tools, release 12.4, V12.4.131"
    with pytest.raises(errors.ToolkitFetchError) as info:
        nvcc.check_nvcc_version(tmp_path, "12.8")
    assert "reports release 12.4" in str(info.value) and "12.8" in str(info.value)


def test_default_host_compiler():
    assert host_compiler.default_host_compiler("11.8") == "g++-11"
    assert host_compiler.default_host_compiler("12.4") == "g++-12"
    assert host_compiler.default_host_compiler("13.0") == "g++-12"


def test_unknown_host_compiler_fix_is_apt_get_install(tmp_path):
    with pytest.raises(errors.ToolkitFetchError) as info:
        host_compiler.resolve_host_compiler("g++-7-kbit-missing", tmp_path)
    assert "apt-get install g++-7-kbit-missing" in str(info.value)


# ---------------------------------------------------------------------------------- marker / idempotence


def test_source_hash_is_stable_and_sensitive():
    reordered = {"pypi": SOURCE_124["pypi"], "debian": dict(reversed(list(SOURCE_124["debian"].items())))}
    assert tree.source_hash("12.4", SOURCE_124) == tree.source_hash("12.4", reordered)
    assert tree.source_hash("12.4", SOURCE_124) != tree.source_hash("12.5", SOURCE_124)
    bumped = {**SOURCE_124, "pypi": ["nvidia-cuda-cccl-cu12==12.4.99"]}
    assert tree.source_hash("12.4", SOURCE_124) != tree.source_hash("12.4", bumped)


def _fake_tree(dest: pathlib.Path, home_rel: str, source: dict, toolkit: str, verified: bool = True) -> None:
    home = dest / home_rel
    for rel in tree.REQUIRED_FILES:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("x")
    files = [os.path.normpath(os.path.join(home_rel, f)) for f in tree.REQUIRED_FILES]
    tree.write_marker(dest, digest=tree.source_hash(toolkit, source), home_rel=home_rel, files=files, verified=verified)


def test_provision_reuses_a_matching_tree_fast(tmp_path):
    dest = tmp_path / "cuda124"
    _fake_tree(dest, ".", SOURCE_124, "12.4")
    start = time.monotonic()
    home = tf.provision("cuda124", "12.4", SOURCE_124, dest, log=lambda m: None)
    assert home == dest and time.monotonic() - start < 0.5


def test_provision_reuses_pypi_tree_and_returns_its_home(tmp_path):
    source = {"pypi": ["nvidia-cuda-nvcc==13.0.88"]}
    _fake_tree(tmp_path / "cuda130", "nvidia/cu13", source, "13.0")
    home = tf.provision("cuda130", "13.0", source, tmp_path / "cuda130", log=lambda m: None)
    assert home == tmp_path / "cuda130" / "nvidia" / "cu13"


def test_complete_tree_rejects_stale_unverified_or_incomplete(tmp_path):
    dest = tmp_path / "t"
    _fake_tree(dest, ".", SOURCE_124, "12.4")
    digest = tree.source_hash("12.4", SOURCE_124)
    assert tree.complete_tree(dest, digest) == dest
    assert tree.complete_tree(dest, tree.source_hash("12.5", SOURCE_124)) is None
    (dest / "nvvm/bin/cicc").unlink()
    assert tree.complete_tree(dest, digest) is None
    _fake_tree(dest, ".", SOURCE_124, "12.4", verified=False)
    assert tree.complete_tree(dest, digest) is None
    (dest / tree.MARKER_NAME).write_text("{not json")
    assert tree.complete_tree(dest, digest) is None


def test_foreign_destination_is_never_replaced(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "important.txt").write_text("keep")
    with pytest.raises(errors.ToolkitFetchError) as info:
        tf.provision("cuda124", "12.4", SOURCE_124, dest, log=lambda m: None)
    assert "is not a tree made by ci/toolkit_fetch.py" in str(info.value) and "fix:" in str(info.value)
    assert (dest / "important.txt").read_text() == "keep"


def test_variant_without_source_is_unavailable(tmp_path):
    with pytest.raises(errors.ToolkitUnavailable) as info:
        tf.provision("cuda128", "12.8", {}, tmp_path / "x", log=lambda m: None)
    assert "release pipeline" in str(info.value)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_exit_codes(tmp_path, capsys):
    # the real matrix: cuda128 has no toolkit_source, cpu is no CUDA row, nope is no row
    assert tf.main(["cuda128", "--dest", str(tmp_path / "d")]) == 2
    assert tf.main(["cpu", "--dest", str(tmp_path / "d")]) == 2
    assert tf.main(["nope", "--dest", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "use one of: cpu, cuda118, cuda124, cuda128, cuda130" in err


def test_cli_refuses_an_invalid_matrix(tmp_path, capsys):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text('schema = 1\n[variants.cuda128]\nbackend = "cuda"\ntoolkit = "12.8"\n')
    assert tf.main(["cuda128", "--dest", str(tmp_path / "d"), "--matrix", str(matrix)]) == 1
    assert "missing key 'sass'" in capsys.readouterr().err


def test_cli_prints_cuda_home_last(tmp_path, capsys):
    source = tf.load_variant("cuda130")["toolkit_source"]
    _fake_tree(tmp_path / "cuda130", "nvidia/cu13", source, "13.0")
    assert tf.main(["cuda130", "--dest", str(tmp_path / "cuda130")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "cuda130" / "nvidia" / "cu13")
