"""One offline command that proves kbit's CUDA kernels on the GPU machine at hand: `python ci/gpu_check.py`.

This module owns that command (and `nox -s tests-cuda`, which runs it). It uses the machine's environment as it
is: the torch that is installed, the nvcc it finds, no venv and no download. In order:

  probe    torch, its CUDA version, the driver (cuDriverGetVersion) and the GPU's compute capability; without a
           GPU it stops here, naming what is missing, with exit code 2
  plan     the matrix.toml row to build: torch's CUDA major, a toolkit the driver runs, an nvcc that reports
           exactly the row's release (ci/build_variant.py finds it), and the GPU's arch in the row's SASS list
  build    three jobs side by side: that row for the GPU's arch only (ci/build_variant.py --archs), a second test
           build for an arch of another generation with no PTX (--no-ptx: the GPU must be refused), and the
           package with the CPU library, installed by pip into a temporary target folder
           (pip install --no-build-isolation --no-deps --target); the CUDA library and its manifest are then
           copied beside the CPU library, so the tested package holds both
  kbit     `python -m kbit` from that folder: what it chose and why (it must choose the built variant)
  tests    every `cuda`-marked test against that folder (pytest -m cuda, KBIT_REQUIRE_GPU=1 so that nothing
           that should run is skipped)
  bench    ci/bench.py --device cuda --json
  report   gpu_check.json and gpu_check.txt in --out (default build/gpu_check/), paths printed

Each step is timed and has its own timeout; a failed step is reported and the steps that do not depend on it
still run; --budget caps the whole command. `--dry-run` prints the plan for a machine described by flags
(--gpu-arch 90 --driver 580.65 --torch-cuda 13.0) without a GPU, with the decision kbit's own policy makes for
it (kbit._policy.decide on those facts).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import build_variant, cuda_catalog, matrix  # noqa: E402

ROOT = matrix.ROOT
DEFAULT_OUT = ROOT / "build" / "gpu_check"
DEFAULT_BUDGET_S = 600  # the GPU machines are lent for minutes: the whole command stops by then
TIMEOUTS = {"build": 300, "install": 300, "kbit": 120, "tests": 360, "bench": 180}

# The CUDA version each Linux driver branch runs (NVIDIA's CUDA toolkit release notes, table 3); used only to
# describe a machine in --dry-run. The real run asks the driver (cuDriverGetVersion).
DRIVER_CUDA = ((580, (13, 0)), (575, (12, 9)), (570, (12, 8)), (560, (12, 6)), (555, (12, 5)), (550, (12, 4)),
               (545, (12, 3)), (535, (12, 2)), (530, (12, 1)), (525, (12, 0)), (520, (11, 8)), (450, (11, 0)))


class GpuCheckError(Exception):
    """The check cannot go on; the message says what is missing and the fix."""


# ------------------------------------------------------------------------------------------ the machine

@dataclass
class Machine:
    """What the check needs to know about the machine (probed, or described by --dry-run flags)."""

    torch_version: str | None
    torch_cuda: str | None            # torch.version.cuda, "13.0"
    driver_release: str | None        # "580.65.06" (nvidia-smi or /proc/driver/nvidia/version)
    driver_cuda: tuple[int, int] | None  # cuDriverGetVersion
    gpus: list[dict] = field(default_factory=list)  # {"index", "name", "cc": [9, 0]}
    cores: int = os.cpu_count() or 1
    simulated: bool = False

    @property
    def sm(self) -> int | None:
        return self.gpus[0]["cc"][0] * 10 + self.gpus[0]["cc"][1] if self.gpus else None


def driver_cuda_version() -> tuple[tuple[int, int] | None, str]:
    """cuDriverGetVersion through libcuda, or (None, why not)."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        return None, f"the NVIDIA driver library {name} does not load ({exc})"
    value = ctypes.c_int(0)
    status = lib.cuDriverGetVersion(ctypes.byref(value))
    if status != 0 or value.value <= 0:
        return None, f"cuDriverGetVersion failed with CUresult {status}"
    return (value.value // 1000, (value.value % 1000) // 10), ""


def driver_release() -> str | None:
    """The driver's release number, e.g. 580.65.06 (nvidia-smi, else /proc/driver/nvidia/version)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    words = [w for w in text.split() if w.count(".") >= 1 and w.replace(".", "").isdigit()]
    return words[0] if words else None


def probe() -> Machine:
    """The machine as it is. Raises GpuCheckError, naming what is missing, when there is no usable GPU."""
    try:
        import torch
    except ImportError as exc:
        raise GpuCheckError(f"torch does not import in {sys.executable} ({exc}). fix: run with the Python whose "
                            f"environment has a CUDA build of torch") from exc
    cuda, why = driver_cuda_version()
    machine = Machine(torch.__version__, torch.version.cuda, driver_release(), cuda)
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install a CUDA "
                       f"build of torch")
    if cuda is None:
        missing.append(f"no NVIDIA driver: {why}")
    if not missing and not torch.cuda.is_available():
        missing.append("torch sees no GPU (torch.cuda.is_available() is False; check CUDA_VISIBLE_DEVICES and "
                       "`nvidia-smi`)")
    if missing:
        raise GpuCheckError("this machine cannot run the GPU check: " + "; ".join(missing))
    for i in range(torch.cuda.device_count()):
        machine.gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                             "cc": list(torch.cuda.get_device_capability(i))})
    return machine


def simulated(gpu_arch: int, driver: str, torch_cuda: str, gpus: int = 1) -> Machine:
    """The machine that --dry-run flags describe."""
    major = int(driver.split(".")[0])
    cuda = next((c for floor, c in DRIVER_CUDA if major >= floor), None)
    return Machine(f"(described)+cu{torch_cuda.replace('.', '')}", torch_cuda, driver, cuda,
                   [{"index": i, "name": f"(simulated sm_{gpu_arch})", "cc": [gpu_arch // 10, gpu_arch % 10]}
                    for i in range(gpus)], simulated=True)


# ------------------------------------------------------------------------------------------ the plan

@dataclass
class Plan:
    """What the check will build, install and run, and why."""

    variant: str
    toolkit: str
    nvcc: str | None
    nvcc_note: str
    sass: int                 # the arch built (SASS + PTX of the same arch)
    foreign_sass: int | None  # the arch of the test build without PTX, which the GPU must refuse
    host_cxx: str | None      # KBIT_HOST_CXX when the row's host compiler is not on this machine
    reasons: list[str]
    rejected: list[str]


def _version(v: str) -> tuple[int, ...]:
    return cuda_catalog.version_tuple(v)


def sass_for(row: matrix.Variant, sm: int) -> int | None:
    """The row's SASS arch that runs on sm: sm itself, else the newest of the same major with a lower minor."""
    if sm in row.sass:
        return sm
    same = [a for a in row.sass if a // 10 == sm // 10 and a % 10 <= sm % 10]
    return max(same) if same else None


def foreign_arch(row: matrix.Variant, sm: int) -> int | None:
    """An arch of the row that the GPU cannot run without PTX: the first arch of the newest older generation
    (sm_80 for an sm_90 GPU), else the first arch of a newer one."""
    older = [a for a in row.sass if a // 10 < sm // 10]
    if older:
        major = max(a // 10 for a in older)
        return min(a for a in older if a // 10 == major)
    newer = sorted(a for a in row.sass if a // 10 > sm // 10)
    return newer[0] if newer else None


def host_compiler(row: matrix.Variant) -> tuple[str | None, str]:
    """KBIT_HOST_CXX for the build when the row's host compiler is missing here (and why), else (None, "")."""
    if os.environ.get("KBIT_HOST_CXX") or sys.platform == "win32" or shutil.which(row.host_compiler):
        return None, ""
    for other in ("g++", "c++"):
        found = shutil.which(other)
        if found:
            return found, (f"the row's host compiler {row.host_compiler} is not here; nvcc {row.toolkit} gets "
                           f"{found} (KBIT_HOST_CXX)")
    return None, f"no host compiler: neither {row.host_compiler} nor g++ is on PATH"


def make_plan(machine: Machine, variants: dict[str, matrix.Variant], *, find_nvcc=build_variant.find_toolkit) -> Plan:
    """The row to build for this machine. Raises GpuCheckError, listing every row considered, when none fits."""
    plat = build_variant.current_platform()
    torch_cuda = tuple(int(x) for x in machine.torch_cuda.split(".")[:2])
    rows = sorted((v for v in variants.values() if v.backend == "cuda"), key=lambda v: _version(v.toolkit),
                  reverse=True)
    rejected = []
    for row in rows:
        why = None
        toolkit = _version(row.toolkit)
        if toolkit[0] != torch_cuda[0]:
            why = f"CUDA {row.toolkit} is not torch's CUDA major ({machine.torch_cuda})"
        elif machine.driver_cuda is not None and toolkit > machine.driver_cuda:
            why = f"the driver runs CUDA {'.'.join(map(str, machine.driver_cuda))}, older than {row.toolkit}"
        elif plat not in row.platforms:
            why = f"not built for {plat}"
        elif sass_for(row, machine.sm) is None:
            why = f"its SASS list {list(row.sass)} does not cover sm_{machine.sm}"
        if why:
            rejected.append(f"{row.name}: {why}")
            continue
        try:
            nvcc, note = str(find_nvcc(row)), ""
        except build_variant.ToolkitNotFoundError as exc:
            if not machine.simulated:
                rejected.append(f"{row.name}: {exc}")
                continue
            nvcc, note = None, f"on the described machine: {str(exc).splitlines()[0]}"
        cxx, cxx_note = host_compiler(row)
        sass = sass_for(row, machine.sm)
        reasons = [f"torch {machine.torch_version} has CUDA {machine.torch_cuda}: rows of CUDA {torch_cuda[0]}.x qualify, "
                   f"newest first",
                   f"driver {machine.driver_release or '?'} runs CUDA "
                   f"{'.'.join(map(str, machine.driver_cuda)) if machine.driver_cuda else '?'} >= {row.toolkit}",
                   f"GPU sm_{machine.sm} is in {row.name}'s SASS list as sm_{sass}: a subset build of sm_{sass} "
                   f"(SASS + PTX compute_{sass}) instead of all {len(row.sass)} archs"]
        if nvcc:
            reasons.append(f"nvcc {nvcc} reports release {row.toolkit} (ci/build_variant.py's toolkit search)")
        if cxx_note:
            reasons.append(cxx_note)
        return Plan(row.name, row.toolkit, nvcc, note, sass, foreign_arch(row, machine.sm), cxx, reasons, rejected)
    raise GpuCheckError("no matrix.toml row can be built and run here:\n" + "\n".join(f"  - {r}" for r in rejected) +
                        "\nfix: provide the toolkit of a row for torch's CUDA version (e.g. set "
                        "KBIT_CUDA_HOME_130=/path/to/cuda-13.0) or a torch whose CUDA major matrix.toml has")


# ------------------------------------------------------------------------------------------ commands

@dataclass
class Layout:
    """Where everything goes (under --out)."""

    out: Path

    @property
    def build_root(self) -> Path:
        return self.out / "build"

    @property
    def target(self) -> Path:
        return self.out / "site"

    def staged(self, sass: int, no_ptx: bool = False) -> Path:
        return (self.build_root / "staging" / (build_variant.current_platform() +
                                               build_variant.staging_suffix((sass,), no_ptx)) / "kbit")


def build_command(plan: Plan, layout: Layout, sass: int, no_ptx: bool = False) -> list[str]:
    return [sys.executable, str(ROOT / "ci" / "build_variant.py"), plan.variant, "--archs", str(sass),
            *(["--no-ptx"] if no_ptx else []), "--build-root", str(layout.build_root)]


def install_command(layout: Layout) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
            "--upgrade", "--target", str(layout.target),
            f"--config-settings=build-dir={layout.build_root / 'cpu-skbuild'}", str(ROOT)]


def kbit_command(json_out: bool = False) -> list[str]:
    return [sys.executable, "-m", "kbit", *(["--json"] if json_out else [])]


def pytest_command(layout: Layout) -> list[str]:
    return [sys.executable, "-m", "pytest", str(ROOT / "tests"), "-m", "cuda", "-p", "no:cacheprovider", "-q",
            "-rfEs", f"--junitxml={layout.out / 'junit.xml'}"]


def bench_command(extra: list[str] = ()) -> list[str]:
    return [sys.executable, str(ROOT / "ci" / "bench.py"), "--device", "cuda", "--json", *extra]


def test_env(plan: Plan, layout: Layout) -> dict[str, str]:
    """The environment of the steps that run the installed package."""
    env = {k: v for k, v in os.environ.items() if k not in ("BNB_CUDA_VERSION", "PYTHONPATH")}
    env["PYTHONPATH"] = str(layout.target)
    env["KBIT_REQUIRE_GPU"] = "1"
    if plan.foreign_sass is not None:
        env["KBIT_TEST_NOPTX_DIR"] = str(layout.staged(plan.foreign_sass, no_ptx=True))
    return env


# ------------------------------------------------------------------------------------------ running steps

@dataclass
class Step:
    """One timed step of the check."""

    name: str
    command: str
    status: str = "not run"  # ok | failed | timed out | skipped | not run
    seconds: float = 0.0
    detail: str = ""


class Runner:
    """Runs steps with their timeouts inside the overall budget, and records them."""

    def __init__(self, layout: Layout, budget: float, log=print):
        self.layout, self.deadline, self.log, self.steps = layout, time.monotonic() + budget, log, []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, name: str, cmd: list[str], env=None, cwd=ROOT) -> tuple[Step, subprocess.Popen | None]:
        step = Step(name, shlex.join(cmd))
        self.steps.append(step)
        logfile = self.layout.out / f"{name}.log"
        self.log(f"[{name}] $ {step.command}  (log: {logfile})")
        handle = open(logfile, "w")
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        proc._kbit_started, proc._kbit_log = time.monotonic(), (handle, logfile)  # type: ignore[attr-defined]
        proc._kbit_ended = None  # type: ignore[attr-defined]

        def note_end():  # the step's own end, even while another step of a parallel group is awaited
            proc.wait()
            proc._kbit_ended = time.monotonic()  # type: ignore[attr-defined]

        proc._kbit_waiter = threading.Thread(target=note_end, daemon=True)  # type: ignore[attr-defined]
        proc._kbit_waiter.start()  # type: ignore[attr-defined]
        return step, proc

    def finish(self, step: Step, proc: subprocess.Popen, timeout: float) -> str:
        """Wait for a started step; returns its output."""
        limit = max(1.0, min(timeout, time.monotonic() - proc._kbit_started + self.left()))  # type: ignore[attr-defined]
        waiter = proc._kbit_waiter  # type: ignore[attr-defined]
        waiter.join(max(0.0, limit - (time.monotonic() - proc._kbit_started)))  # type: ignore[attr-defined]
        rc = proc.returncode
        if waiter.is_alive():
            proc.kill()
            waiter.join()
            rc = None
        step.seconds = round(proc._kbit_ended - proc._kbit_started, 1)  # type: ignore[attr-defined]
        handle, logfile = proc._kbit_log  # type: ignore[attr-defined]
        handle.close()
        output = logfile.read_text(errors="replace")
        if rc is None:
            step.status, step.detail = "timed out", f"killed after {step.seconds:.0f} s (limit {limit:.0f} s)"
        elif rc == 0:
            step.status = "ok"
        else:
            step.status, step.detail = "failed", f"exit code {rc}; last lines:\n" + _tail(output)
        self.log(f"[{step.name}] {step.status} in {step.seconds:.1f} s{': ' + step.detail if step.detail else ''}")
        return output

    def run(self, name: str, cmd: list[str], timeout: float, env=None, cwd=ROOT) -> tuple[Step, str]:
        if self.left() < 5:
            step = Step(name, shlex.join(cmd), "skipped", 0.0, "the overall --budget is spent")
            self.steps.append(step)
            self.log(f"[{name}] skipped: {step.detail}")
            return step, ""
        step, proc = self.start(name, cmd, env, cwd)
        return step, self.finish(step, proc, timeout)

    def skip(self, name: str, why: str) -> Step:
        step = Step(name, "", "skipped", 0.0, why)
        self.steps.append(step)
        self.log(f"[{name}] skipped: {why}")
        return step


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def copy_cuda_library(staged: Path, target: Path, variant: str) -> list[str]:
    """Put the built CUDA library and its manifest beside the installed CPU library; returns the files copied."""
    plat = build_variant.current_platform()
    files = [staged / matrix.library_filename(variant, plat), staged / f"{matrix.library_stem(variant)}.build.json"]
    for f in files:
        shutil.copy2(f, target / "kbit" / f.name)
    return [str(target / "kbit" / f.name) for f in files]


def junit_counts(path: Path) -> dict:
    """Counts and failed test ids from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": []}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
            counts["failures"].append(name)
        elif "error" in kinds:
            counts["errors"] += 1
            counts["failures"].append(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
            counts["skips"].append(f"{name}: {case.find('skipped').get('message', '')}")
        else:
            counts["passed"] += 1
    return counts


# ------------------------------------------------------------------------------------------ the check

def check(layout: Layout, budget: float, log=print, steps: set[str] = frozenset({"kbit", "tests", "bench"}),
          bench_args: list[str] = (), machine: Machine | None = None) -> dict:
    """Run the whole check; returns the report (also written to layout.out). `machine`: a described machine for
    --build-only (the builds and the install, no GPU needed), else the probed one."""
    started = time.monotonic()
    report: dict = {"command": shlex.join([sys.executable, *sys.argv]), "host": platform.node(),
                    "python": sys.version.split()[0], "cores": os.cpu_count()}
    machine = machine or probe()  # GpuCheckError without a GPU, before anything is built
    layout.out.mkdir(parents=True, exist_ok=True)
    report["machine"] = asdict(machine)
    gpus = ", ".join(f"{g['name']} (sm_{g['cc'][0]}{g['cc'][1]})" for g in machine.gpus)
    log(f"GPU: {gpus}; driver "
        f"{machine.driver_release} (CUDA {'.'.join(map(str, machine.driver_cuda))}); torch {machine.torch_version} "
        f"(CUDA {machine.torch_cuda}); {machine.cores} cores")
    plan = make_plan(machine, matrix.load())
    report["plan"] = asdict(plan)
    for line in plan.reasons:
        log(f"  plan: {line}")
    run = Runner(layout, budget, log)
    env = dict(os.environ)
    if plan.host_cxx:
        env["KBIT_HOST_CXX"] = plan.host_cxx
    if layout.target.exists():
        shutil.rmtree(layout.target)

    # build: the GPU's variant, the no-PTX test variant and the CPU package side by side
    jobs = [("build-" + plan.variant + f"-sm{plan.sass}", build_command(plan, layout, plan.sass), TIMEOUTS["build"]),
            ("install", install_command(layout), TIMEOUTS["install"])]
    if plan.foreign_sass is not None:
        jobs.insert(1, (f"build-{plan.variant}-sm{plan.foreign_sass}-noptx",
                        build_command(plan, layout, plan.foreign_sass, no_ptx=True), TIMEOUTS["build"]))
    started_jobs = [(run.start(name, cmd, env), timeout) for name, cmd, timeout in jobs]
    for (step, proc), timeout in started_jobs:
        run.finish(step, proc, timeout)
    by_name = {s.name: s for s in run.steps}
    built, installed = by_name[jobs[0][0]], by_name["install"]
    if built.status == "ok" and installed.status == "ok":
        try:
            report["bundled"] = copy_cuda_library(layout.staged(plan.sass), layout.target, plan.variant)
        except OSError as exc:
            built.status, built.detail = "failed", f"the built library is not where expected: {exc}"
    ready = built.status == "ok" and installed.status == "ok"
    tenv = test_env(plan, layout)

    if "kbit" not in steps:
        pass
    elif installed.status == "ok":
        step, out = run.run("python -m kbit", kbit_command(), TIMEOUTS["kbit"], tenv)
        log(out.rstrip())
        _, js = run.run("python -m kbit --json", kbit_command(True), TIMEOUTS["kbit"], tenv)
        try:
            shown = json.loads(js)
            report["kbit"] = {"exit_code": shown["exit_code"], "decision": shown["decision"],
                              "self_tests": shown["self_tests"], "findings": shown["findings"]}
            chosen = shown["decision"]["variant"]
            if ready and chosen != plan.variant:
                step.status, step.detail = "failed", f"kbit chose {chosen!r}, not the built {plan.variant}"
        except (ValueError, KeyError, TypeError) as exc:
            report["kbit"] = {"error": f"python -m kbit --json gave no report: {exc}"}
    else:
        run.skip("python -m kbit", "the package did not install")

    if ready and "tests" in steps:
        step, out = run.run("pytest -m cuda", pytest_command(layout), TIMEOUTS["tests"], tenv)
        counts = junit_counts(layout.out / "junit.xml")
        report["tests"] = counts
        if step.status != "timed out":
            step.detail = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
                           f"{counts['skipped']} skipped" + (f"; {step.detail}" if step.status == "failed" else ""))
        log(_tail(out, 30))
    elif "tests" in steps:
        run.skip("pytest -m cuda", "no package holding the CUDA library (see the build and install steps)")
    if ready and "bench" in steps:
        step, out = run.run("bench", bench_command(bench_args), TIMEOUTS["bench"], tenv)
        try:
            report["bench"] = json.loads(out[out.index("{"):])
        except ValueError:
            report["bench"] = {"error": _tail(out)}
    elif "bench" in steps:
        run.skip("bench", "no package holding the CUDA library")

    report["build_only"] = not steps
    report["steps"] = [asdict(s) for s in run.steps]
    report["total_seconds"] = round(time.monotonic() - started, 1)
    ran_tests = "tests" in steps
    report["ok"] = all(s.status == "ok" for s in run.steps) and (
        not ran_tests or (report.get("tests", {}).get("failed", 1) == 0 and report["tests"].get("errors", 1) == 0))
    return report


def render(report: dict) -> str:
    """The text report."""
    what = "kbit GPU check" + (" --build-only (builds and install; no GPU step)" if report.get("build_only") else "")
    lines = [f"{what}: {'PASSED' if report.get('ok') else 'FAILED'} in {report.get('total_seconds', 0):.0f} s "
             f"({report.get('cores')} cores)"]
    m = report.get("machine") or {}
    for g in m.get("gpus", []):
        lines.append(f"GPU {g['index']}: {g['name']} sm_{g['cc'][0]}{g['cc'][1]}")
    lines.append(f"driver {m.get('driver_release')}, torch {m.get('torch_version')} (CUDA {m.get('torch_cuda')})")
    plan = report.get("plan") or {}
    if plan:
        lines.append(f"built {plan['variant']} for sm_{plan['sass']}; refusal test build sm_{plan['foreign_sass']} "
                     f"without PTX")
    lines.append("")
    lines.append(f"{'step':<36} {'status':<10} {'seconds':>8}  detail")
    for s in report.get("steps", []):
        detail = s["detail"].splitlines()[0] if s["detail"] else ""
        lines.append(f"{s['name']:<36} {s['status']:<10} {s['seconds']:8.1f}  {detail}")
    tests = report.get("tests")
    if tests:
        lines.append("")
        lines += [f"FAILED {name}" for name in tests["failures"]]
        lines += [f"skipped {why}" for why in tests["skips"]]
    bench = report.get("bench") or {}
    if bench.get("rows"):
        lines.append("")
        sys.path.insert(0, str(ROOT))
        from ci import bench as bench_module

        lines.append(bench_module.render_cuda([bench_module.CudaRow(**r) for r in bench["rows"]], bench["header"]))
    elif bench.get("error"):
        lines += ["", "bench: " + bench["error"]]
    k = report.get("kbit") or {}
    if k.get("decision"):
        lines += ["", f"kbit chose {k['decision']['variant']} ({k['decision']['source']}): "
                      + "; ".join(k["decision"]["reasons"])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ dry run

def _import_policy():
    """kbit._facts and kbit._policy from this checkout, without importing the package (which needs a build)."""
    import importlib
    import types

    if "kbit" not in sys.modules:
        pkg = types.ModuleType("kbit")
        pkg.__path__ = [str(ROOT / "python" / "kbit")]
        sys.modules["kbit"] = pkg
    return importlib.import_module("kbit._facts"), importlib.import_module("kbit._policy")


def expected_decision(machine: Machine, plan: Plan, variants: dict[str, matrix.Variant], sass: int,
                      ptx: int | None) -> str:
    """What kbit's own policy decides on this machine for a package holding the CPU library and `plan.variant`
    built with SASS `sass` and PTX `ptx`."""
    try:
        facts_mod, policy = _import_policy()
        row = variants[plan.variant]
        bundled = (facts_mod.Variant("cpu", "cpu", None, None, (), None, None, "x", None, True),
                   facts_mod.Variant(plan.variant, "cuda", tuple(int(x) for x in row.toolkit.split(".")),
                                     row.toolkit + ".0", (sass,), ptx, row.min_driver, "x", None, True))
        gpus = tuple(facts_mod.Gpu(g["index"], g["name"], tuple(g["cc"])) for g in machine.gpus)
        facts = facts_mod.Facts(
            facts_mod.Host("Linux", "x86_64", "glibc 2.39", "3.12", "linux"),
            facts_mod.TorchFacts(machine.torch_version, machine.torch_cuda),
            facts_mod.DriverFacts("ok", "libcuda.so.1", machine.driver_cuda, gpus), bundled)
        d = policy.decide(facts)
    except Exception as exc:  # the policy's interface is the package's own: say so rather than guess
        return f"(not computed: kbit._policy.decide on simulated facts failed: {type(exc).__name__}: {exc})"
    if d.variant:
        return f"{d.variant} ({d.source}); " + "; ".join(d.reasons)
    error = type(d.error()).__name__
    return f"no variant -> {error}: " + " ".join(d.warnings or d.reasons)


def dry_run(machine: Machine, layout: Layout, budget: float) -> str:
    variants = matrix.load()
    plan = make_plan(machine, variants)
    g = machine.gpus[0]
    lines = [f"kbit GPU check, dry run for: GPU sm_{g['cc'][0]}{g['cc'][1]} x{len(machine.gpus)}, driver "
             f"{machine.driver_release} (CUDA {'.'.join(map(str, machine.driver_cuda or ())) or '?'}), torch CUDA "
             f"{machine.torch_cuda}, {machine.cores} cores here, budget {budget:.0f} s",
             "", f"variant: {plan.variant} (matrix.toml row, CUDA {plan.toolkit})"]
    lines += [f"  because {r}" for r in plan.reasons]
    lines += [f"  not {r}" for r in plan.rejected]
    if plan.nvcc_note:
        lines.append(f"  nvcc: {plan.nvcc_note}")
    lines += [f"archs: SASS sm_{plan.sass} + PTX compute_{plan.sass} (subset of {list(variants[plan.variant].sass)})",
              f"refusal test build: SASS sm_{plan.foreign_sass} only, no PTX (ci/build_variant.py --no-ptx): "
              f"the sm_{machine.sm} GPU must get ArchNotCoveredError before any kernel runs",
              "", "expected decision (kbit._policy.decide on these facts):",
              f"  package with {plan.variant} sm_{plan.sass}: "
              + expected_decision(machine, plan, variants, plan.sass, plan.sass)]
    if plan.foreign_sass is not None:
        lines.append(f"  package with {plan.variant} sm_{plan.foreign_sass}, no PTX: "
                     + expected_decision(machine, plan, variants, plan.foreign_sass, None))
    env = test_env(plan, layout)
    lines += ["", "steps (each timed, with its timeout; the three builds run side by side):"]
    steps = [("build", build_command(plan, layout, plan.sass), TIMEOUTS["build"])]
    if plan.foreign_sass is not None:
        steps.append(("build", build_command(plan, layout, plan.foreign_sass, no_ptx=True), TIMEOUTS["build"]))
    steps += [("install", install_command(layout), TIMEOUTS["install"]),
              ("copy", ["cp", str(layout.staged(plan.sass) / matrix.library_filename(plan.variant,
                                                                                     build_variant.current_platform())),
                        str(layout.staged(plan.sass) / f"kbit_{plan.variant}.build.json"),
                        str(layout.target / "kbit") + "/"], 5),
              ("kbit", kbit_command(), TIMEOUTS["kbit"]), ("tests", pytest_command(layout), TIMEOUTS["tests"]),
              ("bench", bench_command(), TIMEOUTS["bench"])]
    for i, (kind, cmd, timeout) in enumerate(steps, 1):
        lines.append(f"  {i}. [{kind}, <= {timeout} s] {shlex.join(cmd)}")
    if plan.host_cxx:
        lines.append(f"  builds run with KBIT_HOST_CXX={plan.host_cxx}")
    lines.append("  kbit, tests and bench run with " + " ".join(
        f"{k}={shlex.quote(env[k])}" for k in ("PYTHONPATH", "KBIT_REQUIRE_GPU", "KBIT_TEST_NOPTX_DIR") if k in env))
    lines += ["", f"reports: {layout.out / 'gpu_check.json'} and {layout.out / 'gpu_check.txt'}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report and build folder (default {DEFAULT_OUT})")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds the whole check may take")
    parser.add_argument("--steps", default="kbit,tests,bench",
                        help="what runs after the build and install (default kbit,tests,bench; `nox -s bench -- "
                             "--device cuda` runs kbit,bench)")
    parser.add_argument("--bench-args", default="", help="extra arguments for ci/bench.py --device cuda")
    parser.add_argument("--dry-run", action="store_true", help="print the plan for the machine the flags describe")
    parser.add_argument("--build-only", action="store_true",
                        help="run only the builds and the install for the machine the flags describe (no GPU "
                             "needed): checks a checkout before the GPU window and measures those steps")
    parser.add_argument("--gpu-arch", type=int, help="dry run: the GPU's compute capability as sm number (90)")
    parser.add_argument("--gpus", type=int, default=1, help="dry run: how many such GPUs")
    parser.add_argument("--driver", help="dry run: the driver release (580.65)")
    parser.add_argument("--torch-cuda", help="dry run: torch.version.cuda (13.0)")
    args = parser.parse_args(argv)
    layout = Layout(args.out.resolve())
    try:
        described = None
        if args.dry_run or args.build_only:
            missing = [f"--{n.replace('_', '-')}" for n in ("gpu_arch", "driver", "torch_cuda") if getattr(args, n) is None]
            if missing:
                parser.error(f"--dry-run and --build-only describe the machine with {', '.join(missing)} (e.g. "
                             f"--gpu-arch 90 --driver 580.65 --torch-cuda 13.0)")
            described = simulated(args.gpu_arch, args.driver, args.torch_cuda, args.gpus)
        if args.dry_run:
            print(dry_run(described, layout, args.budget))
            return 0
        steps = {x.strip() for x in args.steps.split(",") if x.strip()}
        if not steps <= {"kbit", "tests", "bench"}:
            parser.error(f"--steps takes kbit, tests and bench; got {args.steps!r}")
        if args.build_only:
            steps = set()
        report = check(layout, args.budget, steps=steps, bench_args=shlex.split(args.bench_args), machine=described)
    except (GpuCheckError, matrix.MatrixError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (layout.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = render(report)
    (layout.out / "gpu_check.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"\nreports: {layout.out / 'gpu_check.json'} and {layout.out / 'gpu_check.txt'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
