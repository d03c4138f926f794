"""The runtime on a real GPU (every test here is marked `cuda`): the installed package chooses its CUDA variant
for this GPU and says why, paged optimizer states really live in CUDA managed memory, and a variant whose SASS
list does not hold this GPU (and that has no PTX) is refused with ArchNotCoveredError before any kernel runs,
never with CUDA's "no kernel image is available".

The refused variant is a test build without PTX (ci/build_variant.py VARIANT --archs 80 --no-ptx):
ci/gpu_check.py builds it and names its folder in KBIT_TEST_NOPTX_DIR; without that variable the test builds one
itself when the toolkit is here. kbit is used through its public API and `python -m kbit`.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kbit
import kbit.optim as O

pytestmark = pytest.mark.cuda

PACKAGE = Path(kbit.__file__).parent


def run_in(site: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BNB_CUDA_VERSION"}
    env["PYTHONPATH"] = str(site)
    cmd = [sys.executable, *(["-c", code] if code is not None else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=site, timeout=300)


def gpu_sm(index: int = 0) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def test_python_m_kbit_chooses_a_bundled_cuda_variant_that_covers_this_gpu():
    done = run_in(PACKAGE.parent, "-m", "kbit", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["exit_code"] == 0, done.stdout[-3000:]
    decision = report["decision"]
    assert decision["source"] == "default" and decision["variant"].startswith("cuda"), decision
    assert [index for index, _ in decision["coverage"]] == list(range(torch.cuda.device_count()))
    assert all(how.startswith("SASS") for _, how in decision["coverage"]), decision["coverage"]
    assert {t["backend"]: t["ok"] for t in report["self_tests"]} == {"cpu": True, "cuda": True}
    load = next(r for r in report["loads"] if r["variant"] == decision["variant"])
    assert load["error"] is None and load["device_status"] == 0 and load["device_count"] == torch.cuda.device_count()


def _is_managed(ptr: int) -> bool:
    """The driver's own answer (cuPointerGetAttribute CU_POINTER_ATTRIBUTE_IS_MANAGED) for a device address."""
    if not sys.platform.startswith("linux"):
        pytest.skip("libcuda.so.1 is asked on Linux only")
    lib = ctypes.CDLL("libcuda.so.1")
    flag = ctypes.c_uint(0)
    CU_POINTER_ATTRIBUTE_IS_MANAGED = 8
    status = lib.cuPointerGetAttribute(ctypes.byref(flag), CU_POINTER_ATTRIBUTE_IS_MANAGED, ctypes.c_uint64(ptr))
    assert status == 0, f"cuPointerGetAttribute failed with CUresult {status}"
    return bool(flag.value)


@pytest.mark.parametrize("cls", [O.PagedAdamW8bit, O.PagedAdamW32bit, O.PagedAdam8bit, O.PagedLion8bit,
                                 O.PagedAdEMAMix8bit, O.PagedAdEMAMix32bit], ids=lambda c: c.__name__)
def test_paged_states_are_in_managed_memory_and_plain_states_are_not(cls):
    p = torch.nn.Parameter(torch.randn(512, 512, device="cuda"))  # 262144 elements: above the paging threshold
    p.grad = torch.randn_like(p)
    paged = cls([p])
    paged.step()
    torch.cuda.synchronize()
    states = {k: v for k, v in paged.state[p].items() if torch.is_tensor(v) and v.numel() >= p.numel() // 2}
    assert states, f"{cls.__name__} made no large state"
    for key, state in states.items():
        assert state.device == p.device and _is_managed(state.data_ptr()), f"{cls.__name__} state {key!r}"
    plain_cls = getattr(O, cls.__name__.removeprefix("Paged"))
    q = torch.nn.Parameter(torch.randn(512, 512, device="cuda"))
    q.grad = torch.randn_like(q)
    plain = plain_cls([q])
    plain.step()
    assert not _is_managed(plain.state[q]["state1"].data_ptr()), "a plain state is in managed memory"
    assert not _is_managed(p.data_ptr())


# ------------------------------------------------------------------------- a GPU outside the SASS list

def _noptx_build(sm: int) -> Path:
    """The folder holding a CUDA library built without PTX for an arch this GPU cannot run."""
    given = os.environ.get("KBIT_TEST_NOPTX_DIR")
    if given:
        return Path(given)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ci import build_variant, gpu_check, matrix

    bundled = sorted(p.name[5:-11] for p in PACKAGE.glob("kbit_cuda*.build.json"))
    row = matrix.load()[bundled[-1]]
    arch = gpu_check.foreign_arch(row, sm)
    if arch is None:
        pytest.skip(f"{row.name} has no arch that sm_{sm} cannot run")
    try:
        build_variant.find_toolkit(row)
    except build_variant.ToolkitNotFoundError as exc:
        pytest.skip(f"no toolkit to build a test variant without PTX: {exc}")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="kbit-noptx-"))
    result = build_variant.build(row.name, archs=(arch,), no_ptx=True, build_root=root, log=lambda s: None)
    return result.library.parent


@pytest.fixture
def site_with_foreign_variant(tmp_path) -> tuple[Path, dict]:
    folder = _noptx_build(gpu_sm())
    manifests = list(folder.glob("kbit_cuda*.build.json"))
    assert len(manifests) == 1, f"{folder} should hold one CUDA manifest, has {manifests}"
    info = json.loads(manifests[0].read_text())
    assert info["ptx"] is None and gpu_sm() not in info["sass"], info
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "kbit", ignore=shutil.ignore_patterns("__pycache__", "libkbit_cuda*", "kbit_cuda*"))
    for f in folder.iterdir():
        if f.name.startswith(("libkbit_cuda", "kbit_cuda")):
            shutil.copy2(f, site / "kbit" / f.name)
    return site, info


FIRST_CUDA_CALL = """
import torch, kbit
import kbit.functional as F
x = torch.randn(4096, device="cuda")
torch.cuda.synchronize()
try:
    F.quantize_blockwise(x)
    print("RAN A KERNEL")
except kbit.KbitError as e:
    print(type(e).__name__, e.exit_code, str(e))
F.quantize_blockwise(x.cpu())  # the CPU library still serves CPU tensors
print("cpu ok")
"""


def test_a_variant_without_this_gpus_arch_is_refused_with_the_typed_error(site_with_foreign_variant):
    site, info = site_with_foreign_variant
    sm = gpu_sm()
    done = run_in(site, code=FIRST_CUDA_CALL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert done.stdout.startswith("ArchNotCoveredError 6 "), out
    said = done.stdout.rsplit("cpu ok", 1)[0]
    assert f"sm_{sm}" in said and f"sm_{info['sass'][0]}" in said and info["variant"] in said
    assert "no kernel image" not in out.lower() and "RAN A KERNEL" not in out
    assert done.stdout.rstrip().endswith("cpu ok")


def test_python_m_kbit_diagnoses_the_uncovered_gpu(site_with_foreign_variant):
    site, info = site_with_foreign_variant
    done = run_in(site, "-m", "kbit", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 6 and report["exit_code"] == 6, done.stdout[-2000:]
    assert report["decision"]["variant"] is None and report["decision"]["problem"] == "arch_not_covered"
    # the library was never opened: kbit refused from the facts and the manifest, before any CUDA call of its own
    assert not [r for r in report["loads"] if r["variant"] == info["variant"]], report["loads"]
