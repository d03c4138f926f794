"""ci/gpu_check.py without a GPU: the plan for a described machine (--dry-run), the row and archs it picks, the
decision kbit's policy predicts, the immediate stop without a GPU, and the report helpers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ci import gpu_check, matrix

from conftest import ROOT

GPU_CHECK = [sys.executable, str(ROOT / "ci" / "gpu_check.py")]


def never_found(row):
    raise gpu_check.build_variant.ToolkitNotFoundError(f"no nvcc {row.toolkit} (test)")


def found_at(row):
    return Path(f"/opt/cuda-{row.toolkit}/bin/nvcc")


def test_dry_run_for_an_h200_with_driver_580_and_cuda_13_torch(tmp_path):
    done = subprocess.run([*GPU_CHECK, "--dry-run", "--gpu-arch", "90", "--driver", "580.65", "--torch-cuda", "13.0",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "variant: cuda130 (matrix.toml row, CUDA 13.0)" in out
    assert "archs: SASS sm_90 + PTX compute_90" in out
    assert "refusal test build: SASS sm_80 only, no PTX" in out
    assert "package with cuda130 sm_90: cuda130 (default)" in out and "GPU 0 runs SASS sm_90" in out
    assert "package with cuda130 sm_80, no PTX: no variant -> ArchNotCoveredError" in out
    assert "cuda130 --archs 90 --build-root" in out and "cuda130 --archs 80 --no-ptx" in out
    assert "pip install --no-build-isolation --no-deps --no-index --upgrade --target " + str(tmp_path / "site") in out
    assert "-m pytest " in out and " -m cuda " in out and "bench.py --device cuda --json" in out
    plat = gpu_check.build_variant.current_platform()
    assert f"KBIT_TEST_NOPTX_DIR={tmp_path}/build/staging/{plat}-sm80-noptx/kbit" in out
    assert str(tmp_path / "gpu_check.json") in out


def test_dry_run_needs_the_machine_described():
    done = subprocess.run([*GPU_CHECK, "--dry-run", "--gpu-arch", "90"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--driver, --torch-cuda" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_stops_at_once_naming_what_is_missing(tmp_path):
    done = subprocess.run([*GPU_CHECK, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: this machine cannot run the GPU check: ")
    if torch.version.cuda is None:
        assert "CPU-only build" in done.stderr
    assert "no NVIDIA driver" in done.stderr or "torch sees no GPU" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing was built


def plan_for(sm: int, driver: str, torch_cuda: str, find=found_at):
    return gpu_check.make_plan(gpu_check.simulated(sm, driver, torch_cuda), matrix.load(), find_nvcc=find)


def test_the_plan_follows_torchs_cuda_and_the_driver():
    assert (plan_for(90, "580.65", "13.0").variant, plan_for(90, "580.65", "13.0").sass) == ("cuda130", 90)
    assert plan_for(86, "550.54", "12.4").variant == "cuda124"   # a 12.8 build would not run on CUDA 12.4
    assert plan_for(89, "570.26", "12.8").variant == "cuda128"
    assert plan_for(87, "580.65", "13.0").sass == 86              # sm_87 runs sm_86 SASS
    plan = plan_for(120, "580.65", "13.0")
    assert plan.sass == 120 and plan.foreign_sass == 100


def test_no_row_fits_names_every_row_and_why():
    real = gpu_check.simulated(90, "580.65", "11.8")
    real.simulated = False  # a probed machine: a missing toolkit rejects the row
    with pytest.raises(gpu_check.GpuCheckError) as info:
        gpu_check.make_plan(real, matrix.load(), find_nvcc=never_found)
    text = str(info.value)
    assert "cuda130: CUDA 13.0 is not torch's CUDA major (11.8)" in text and "cuda118: no nvcc 11.8" in text


def test_a_simulated_machine_without_the_toolkit_is_still_planned():
    plan = gpu_check.make_plan(gpu_check.simulated(90, "580.65", "13.0"), matrix.load(), find_nvcc=never_found)
    assert plan.variant == "cuda130" and plan.nvcc is None and "no nvcc 13.0" in plan.nvcc_note


def test_the_foreign_arch_is_one_the_gpu_cannot_run_without_ptx():
    row = matrix.load()["cuda130"]
    assert gpu_check.foreign_arch(row, 90) == 80
    assert gpu_check.foreign_arch(row, 100) == 90
    assert gpu_check.foreign_arch(row, 75) == 80  # nothing older: a newer generation


def test_driver_branches_map_to_cuda_versions():
    assert gpu_check.simulated(90, "580.65.06", "13.0").driver_cuda == (13, 0)
    assert gpu_check.simulated(90, "550.54", "12.4").driver_cuda == (12, 4)
    assert gpu_check.simulated(90, "572.1", "12.8").driver_cuda == (12, 8)


def test_junit_counts(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok"/>'
                   '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
                   '<testcase classname="a" name="broken"><error message="y"/></testcase>'
                   '<testcase classname="b" name="two_gpus"><skipped message="needs two GPUs"/></testcase>'
                   '</testsuite></testsuites>')
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (1, 1, 1, 1)
    assert counts["failures"] == ["a::bad", "a::broken"] and counts["skips"] == ["b::two_gpus: needs two GPUs"]
    assert gpu_check.junit_counts(tmp_path / "missing.xml")["passed"] == 0


def test_a_step_that_fails_is_recorded_and_the_runner_goes_on(tmp_path):
    runner = gpu_check.Runner(gpu_check.Layout(tmp_path), budget=60, log=lambda s: None)
    bad, _ = runner.run("bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], timeout=30)
    slow, _ = runner.run("slow", [sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    good, out = runner.run("good", [sys.executable, "-c", "print('fine')"], timeout=30)
    assert bad.status == "failed" and "exit code 3" in bad.detail and "boom" in bad.detail
    assert slow.status == "timed out" and slow.seconds < 10
    assert good.status == "ok" and out.strip() == "fine" and (tmp_path / "good.log").read_text().strip() == "fine"


def test_the_text_report_lists_steps_failures_and_the_choice():
    report = {"ok": False, "total_seconds": 250.0, "cores": 16,
              "machine": {"gpus": [{"index": 0, "name": "NVIDIA H200", "cc": [9, 0]}], "driver_release": "580.65.06",
                          "torch_version": "2.11.0+cu130", "torch_cuda": "13.0"},
              "plan": {"variant": "cuda130", "sass": 90, "foreign_sass": 80},
              "steps": [{"name": "install", "status": "ok", "seconds": 40.0, "detail": ""},
                        {"name": "pytest -m cuda", "status": "failed", "seconds": 90.0, "detail": "1 failed\nmore"}],
              "tests": {"failures": ["t::x"], "skips": ["t::y: needs two GPUs"]},
              "kbit": {"decision": {"variant": "cuda130", "source": "default", "reasons": ["GPU 0 runs SASS sm_90"]}}}
    text = gpu_check.render(report)
    assert text.startswith("kbit GPU check: FAILED in 250 s (16 cores)")
    assert "GPU 0: NVIDIA H200 sm_90" in text and "built cuda130 for sm_90" in text
    assert "pytest -m cuda" in text and "1 failed" in text and "more" not in text
    assert "FAILED t::x" in text and "skipped t::y: needs two GPUs" in text
    assert "kbit chose cuda130 (default): GPU 0 runs SASS sm_90" in text
