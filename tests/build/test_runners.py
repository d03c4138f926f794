"""ci/runners.toml and the CI job matrix (ci/runners.py, `nox -s ci-matrix`): derived from matrix.toml, refused
when it does not cover it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ci import matrix, runners


def test_one_build_job_per_variant_and_platform():
    variants = matrix.load()
    jobs = runners.gha_matrix(variants, runners.load())
    builds = jobs["build_linux"]["include"] + jobs["build_windows"]["include"]
    assert [(j["variant"], j["platform"]) for j in builds] == \
        [(v.name, p) for p in matrix.PLATFORMS for v in variants.values() if p in v.platforms]
    assert {j["platform"] for j in jobs["build_windows"]["include"]} == {"win-amd64"}
    assert all(j["container"] for j in jobs["build_linux"]["include"])


def test_packages_are_named_from_the_row():
    table = runners.load()
    computed = runners.gha_matrix(matrix.load(), table)
    jobs = {(j["variant"], j["platform"]): j for j in computed["build_linux"]["include"] + computed["build_windows"]["include"]}
    linux = jobs[("cuda124", "linux-aarch64")]
    assert linux["cuda_packages"].split() == ["cuda-nvcc-12-4", "cuda-cudart-devel-12-4", "cuda-cccl-12-4"]
    assert linux["cuda_source"].endswith("/rhel8/sbsa/cuda-rhel8.repo") and linux["container"].endswith("_aarch64")
    assert jobs[("cuda118", "linux-x86_64")]["host_cxx"] == "/opt/rh/gcc-toolset-11/root/usr/bin/g++"
    win = jobs[("cuda130", "win-amd64")]
    assert win["cuda_packages"].split() == ["cuda_nvcc", "cuda_cudart", "cuda_cccl", "cuda_crt", "libnvvm"]
    assert win["cuda_source"].endswith(f"redistrib_{matrix.load()['cuda130'].release}.json") and not win["container"]
    assert jobs[("cpu", "win-amd64")]["toolkit"] == "" and jobs[("cpu", "win-amd64")]["host_cxx"] == ""
    # nvcc < 12.5 refuses MSVC 19.40+: those rows pin the older toolset, newer ones take the runner's default
    assert [jobs[(n, "win-amd64")]["msvc_toolset"] for n in ("cpu", "cuda118", "cuda124", "cuda128", "cuda130")] == \
        ["", "14.29", "14.29", "", ""]


def test_one_assemble_and_test_job_per_platform():
    variants = matrix.load()
    computed = runners.gha_matrix(variants, runners.load())
    plats = computed["test"]["include"]
    assert [p["platform"] for p in plats] == list(matrix.PLATFORMS)
    assert computed["assemble_linux"]["include"] + computed["assemble_windows"]["include"] == plats
    win = next(p for p in plats if p["platform"] == "win-amd64")
    assert win["variants"].split() == [v.name for v in variants.values() if "win-amd64" in v.platforms]


def test_a_platform_without_a_runner_is_refused(tmp_path):
    path = tmp_path / "runners.toml"
    path.write_text(runners.RUNNERS_PATH.read_text().replace('runner = "ubuntu-24.04-arm"\n', ""))
    with pytest.raises(runners.RunnersError) as info:
        runners.load(path)
    assert "[platforms.linux-aarch64] has no runner" in str(info.value)


def test_cli_prints_the_matrix_as_one_json_line():
    done = subprocess.run([sys.executable, str(runners.RUNNERS_PATH.with_suffix(".py")), "gha-matrix"],
                          capture_output=True, text=True, check=True)
    assert len(done.stdout.strip().splitlines()) == 1
    assert json.loads(done.stdout) == runners.gha_matrix(matrix.load(), runners.load())
