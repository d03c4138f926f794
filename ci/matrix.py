"""matrix.toml: loading, validation and everything derived from it.

This module owns the reading of matrix.toml and the derivations other tools use (CMake arguments, library
names). The CI job matrix is ci/runners.py's (this file plus ci/runners.toml). It does not build anything and does
not look for toolkits (see ci/build_variant.py). Validation collects every problem of every row before failing, and each problem
names the row, what is wrong and the fix, so that a bad row is refused here and never reaches CMake,
whose own failure (`nvcc fatal : Unsupported gpu architecture 'compute_70'`) says none of that.

CLI:  python ci/matrix.py check [--matrix PATH]
      python ci/matrix.py list | cmake-args VARIANT | newest-cuda | coverage-table [--write | --check]
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

if __package__ in (None, ""):  # run as a script: make `ci` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, e.g. a `pip install .` build env: scikit-build-core brings tomli
    import tomli as tomllib

from ci import cuda_catalog  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MATRIX_PATH = ROOT / "matrix.toml"
SCHEMA = 1
PLATFORMS = ("linux-x86_64", "linux-aarch64", "win-amd64")
COMPRESSION = {"all": "-Xfatbin=-compress-all", "size": "--compress-mode=size"}

_COMMON_KEYS = {"backend", "reason", "platforms", "host_compiler"}
_CUDA_KEYS = {"toolkit", "release", "sass", "ptx", "compression", "min_driver"}
_OPTIONAL_KEYS = {"toolkit_source", "platform_sass"}
_PLATFORM_KEYS = {"glibc_floor", "wheel_budget_mib"}
_NAME = re.compile(r"^(cpu|cuda\d{3,4})$")
_TOOLKIT = re.compile(r"^\d{2}\.\d{1,2}$")
_DRIVER = re.compile(r"^\d{3}\.\d{1,3}(\.\d{1,3})?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with matrix.toml: where, what, and how to fix it."""

    row: str
    what: str
    fix: str

    def __str__(self) -> str:
        where = self.row if self.row.startswith(("(", "platforms.")) else f"variants.{self.row}"
        where = where if where.startswith("(") else f"[{where}]"
        return f"{where} {self.what}\n    fix: {self.fix}"


class MatrixError(Exception):
    """matrix.toml is invalid; carries every problem found."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s); nothing was built:\n{lines}")


@dataclass(frozen=True)
class Platform:
    """One [platforms.<name>] table: what every library and wheel built for that platform must satisfy."""

    name: str
    glibc_floor: str | None  # the newest GLIBC_ symbol version any library may ask for (Linux only)
    wheel_budget_mib: float  # the most the platform's wheel may weigh, every bundled variant included


@dataclass(frozen=True)
class Variant:
    """One validated row of matrix.toml."""

    name: str
    backend: str
    reason: str
    platforms: tuple[str, ...]
    host_compiler: str
    toolkit: str | None = None
    release: str | None = None
    sass: tuple[int, ...] = ()
    ptx: int | None = None
    compression: str | None = None
    min_driver: str | None = None
    toolkit_source: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    platform_sass: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False, compare=False)

    def on(self, platform: str) -> Variant:
        """This row as built for `platform`: its SASS list plus the archs platform_sass adds there (e.g. Jetson's
        sm_87 and Thor's sm_110 on linux-aarch64). Builds, manifests and gates of a platform use this list."""
        extra = self.platform_sass.get(platform, ())
        return replace(self, sass=tuple(sorted(self.sass + extra)), platform_sass={}) if extra else self

    @property
    def library_stem(self) -> str:
        """The one place the library name is computed: libkbit_<variant>.so / kbit_<variant>.dll."""
        return library_stem(self.name)

    @property
    def cmake_archs(self) -> str:
        """CMake CUDA_ARCHITECTURES: SASS as NN-real, the PTX arch as NN-virtual."""
        return cmake_archs(self.sass, self.ptx)


def library_stem(variant: str) -> str:
    """`kbit_<variant>`: the output name, without platform prefix or suffix."""
    return f"kbit_{variant}"


def library_filename(variant: str, platform: str) -> str:
    """libkbit_<variant>.so on Linux, kbit_<variant>.dll on Windows (CMake's default shared-library naming).

    The runtime (python/kbit/_native.py) has its own copy, since the installed package cannot import ci/;
    tests/runtime/test_abi.py checks that the two agree."""
    stem = library_stem(variant)
    return f"{stem}.dll" if platform.startswith("win") else f"lib{stem}.so"


def cmake_archs(sass: tuple[int, ...], ptx: int | None) -> str:
    """Render an arch list in CMake's explicit form, e.g. "75-real;80-real;80-virtual"."""
    items = [f"{a}-real" for a in sass] + ([f"{ptx}-virtual"] if ptx is not None else [])
    return ";".join(items)


def variant_name_for_toolkit(toolkit: str) -> str:
    """"12.4" -> "cuda124": the row name a toolkit must have."""
    major, minor = toolkit.split(".")
    return f"cuda{major}{minor}"


# ---------------------------------------------------------------- validation of one row

def _check_keys(name: str, row: dict) -> list[Problem]:
    backend = row.get("backend")
    if backend not in ("cpu", "cuda"):
        return [Problem(name, f"backend is {backend!r}", 'set backend = "cpu" or "cuda"')]
    required = _COMMON_KEYS | (_CUDA_KEYS if backend == "cuda" else set())
    allowed = required | (_OPTIONAL_KEYS if backend == "cuda" else set())
    problems = [Problem(name, f"missing key {k!r}", f"add {k} (see the key list at the top of matrix.toml)")
                for k in sorted(required - row.keys())]
    problems += [Problem(name, f"unknown key {k!r}", f"remove it or rename it to one of {sorted(allowed)}")
                 for k in sorted(row.keys() - allowed)]
    return problems


def _check_common(name: str, row: dict) -> list[Problem]:
    problems = []
    if not _NAME.match(name):
        problems.append(Problem(name, "row name is not 'cpu' or 'cuda<major><minor>'",
                                "name CUDA rows after their toolkit, e.g. [variants.cuda124] for 12.4"))
    if not isinstance(row.get("reason"), str) or len(row.get("reason", "").strip()) < 10:
        problems.append(Problem(name, "reason is missing or too short",
                                "say in a sentence which users need this row"))
    plats = row.get("platforms")
    if not isinstance(plats, list) or not plats or any(p not in PLATFORMS for p in plats):
        problems.append(Problem(name, f"platforms is {plats!r}", f"use a non-empty subset of {list(PLATFORMS)}"))
    elif len(set(plats)) != len(plats):
        problems.append(Problem(name, f"platforms has duplicates: {plats}", "list each platform once"))
    if not isinstance(row.get("host_compiler"), str) or not row["host_compiler"].strip():
        problems.append(Problem(name, "host_compiler is not a compiler name", 'e.g. host_compiler = "g++-12"'))
    return problems


def _check_toolkit(name: str, row: dict) -> list[Problem]:
    toolkit = row.get("toolkit")
    if not isinstance(toolkit, str) or not _TOOLKIT.match(toolkit):
        return [Problem(name, f"toolkit is {toolkit!r}", 'write the CUDA toolkit as "major.minor", e.g. "12.4"')]
    problems = []
    if _NAME.match(name) and name != variant_name_for_toolkit(toolkit):
        problems.append(Problem(name, f"row name does not match toolkit {toolkit}",
                                f"rename the row to [variants.{variant_name_for_toolkit(toolkit)}] "
                                f"or fix the toolkit"))
    release = row.get("release")
    if not isinstance(release, str) or not re.fullmatch(re.escape(toolkit) + r"\.\d+", release):
        problems.append(Problem(name, f"release is {release!r}, not a full release of CUDA {toolkit}",
                                f'write NVIDIA\'s full release, e.g. release = "{toolkit}.0" (the X.Y.Z of its '
                                f"redistrib_X.Y.Z.json)"))
    if cuda_catalog.toolkit_archs(toolkit) is None:
        problems.append(Problem(name, f"toolkit {toolkit} is not in ci/cuda_catalog.py",
                                f"add it there with the output of its `nvcc --list-gpu-code` "
                                f"(known: {', '.join(cuda_catalog.known_toolkits())})"))
    return problems


def _check_archs(name: str, row: dict) -> list[Problem]:
    sass, ptx, toolkit = row.get("sass"), row.get("ptx"), row.get("toolkit")
    if not isinstance(sass, list) or not sass or not all(type(a) is int for a in sass):
        return [Problem(name, f"sass is {sass!r}", "list compute capabilities as integers, e.g. sass = [75, 80, 86]")]
    problems = []
    dupes = sorted({a for a in sass if sass.count(a) > 1})
    if dupes:
        problems.append(Problem(name, f"sass lists {', '.join(f'sm_{a}' for a in dupes)} more than once",
                                "list each arch once"))
    elif sass != sorted(sass):
        problems.append(Problem(name, f"sass is not in ascending order: {sass}", f"write it as {sorted(sass)}"))
    entry = cuda_catalog.toolkit_archs(toolkit) if isinstance(toolkit, str) else None
    if entry is not None:
        bad = [a for a in sass if a not in entry.sass]
        if bad:
            archs = ", ".join(f"sm_{a}" for a in bad)
            problems.append(Problem(name, f"CUDA {toolkit} cannot compile for {archs} ({entry.note})",
                                    f"remove {archs} from this row, or build it in a row whose toolkit "
                                    f"supports it; CUDA {toolkit} supports "
                                    f"{' '.join(str(a) for a in entry.sass)}"))
    if type(ptx) is not int:
        problems.append(Problem(name, f"ptx is {ptx!r}", f"set ptx = {max(sass)} (the newest SASS arch)"))
    elif ptx != max(sass):
        problems.append(Problem(name, f"the PTX arch {ptx} is not the newest arch of the row ({max(sass)})",
                                f"set ptx = {max(sass)}: PTX is embedded for the newest arch only, "
                                f"as the forward-compatibility path for GPUs newer than the list"))
    return problems


def _check_platform_sass(name: str, row: dict) -> list[Problem]:
    """platform_sass = { <platform> = [archs] }: archs a platform adds to the row's list (the toolkit must support
    them, the row must build for that platform, and the PTX arch stays the newest)."""
    extra = row.get("platform_sass")
    if extra is None:
        return []
    if not isinstance(extra, dict) or not all(isinstance(v, list) and v and all(type(a) is int for a in v)
                                              for v in extra.values()):
        return [Problem(name, f"platform_sass is {extra!r}", 'write platform_sass = { linux-aarch64 = [87, 110] }')]
    problems = []
    entry = cuda_catalog.toolkit_archs(row.get("toolkit")) if isinstance(row.get("toolkit"), str) else None
    for plat, archs in extra.items():
        if plat not in (row.get("platforms") or []):
            problems.append(Problem(name, f"platform_sass names {plat}, which the row does not build for",
                                    f"add {plat} to platforms or drop it from platform_sass"))
        again = [a for a in archs if a in (row.get("sass") or [])]
        if again or archs != sorted(set(archs)):
            problems.append(Problem(name, f"platform_sass.{plat} {archs} repeats the row's archs or is not ascending",
                                    "list only the archs this platform adds, ascending"))
        bad = [a for a in archs if entry is not None and a not in entry.sass]
        if bad:
            problems.append(Problem(name, f"CUDA {row.get('toolkit')} cannot compile for "
                                    f"{', '.join(f'sm_{a}' for a in bad)} (platform_sass.{plat})",
                                    f"remove them; it supports {' '.join(map(str, entry.sass))}"))
        if type(row.get("ptx")) is int and max(archs) > row["ptx"]:
            problems.append(Problem(name, f"platform_sass.{plat} adds sm_{max(archs)}, newer than the PTX arch "
                                    f"{row['ptx']}", "PTX stays the newest arch: add it to sass and raise ptx"))
    return problems


def _check_cuda_misc(name: str, row: dict) -> list[Problem]:
    problems = []
    comp, toolkit = row.get("compression"), row.get("toolkit")
    if comp not in COMPRESSION:
        problems.append(Problem(name, f"compression is {comp!r}", f"use one of {sorted(COMPRESSION)}"))
    elif comp == "size" and isinstance(toolkit, str) and _TOOLKIT.match(toolkit) \
            and cuda_catalog.version_tuple(toolkit) < (13, 0):
        problems.append(Problem(name, f'compression "size" on CUDA {toolkit} raises the driver floor',
                                'use compression = "all" before CUDA 13.0'))
    drv = row.get("min_driver")
    if not isinstance(drv, str) or not _DRIVER.match(drv):
        problems.append(Problem(name, f"min_driver is {drv!r}", 'write the Linux driver release, e.g. "550.54.14"'))
    problems += _check_source(name, row.get("toolkit_source", {}))
    return problems


def _check_source(name: str, source: Any) -> list[Problem]:
    if not isinstance(source, dict) or source.keys() - {"debian", "pypi"}:
        return [Problem(name, f"toolkit_source is {source!r}", "use { debian = { suite, packages }, pypi = [...] }")]
    problems = []
    deb = source.get("debian")
    if deb is not None and (not isinstance(deb, dict) or deb.keys() != {"suite", "packages"}
                            or not all(isinstance(p, str) and "=" in p for p in deb.get("packages", [None]))):
        problems.append(Problem(name, f"toolkit_source.debian is {deb!r}",
                                'use debian = { suite = "trixie", packages = ["name=version", ...] }'))
    pypi = source.get("pypi")
    if pypi is not None and (not isinstance(pypi, list) or not all(isinstance(p, str) and "==" in p for p in pypi)):
        problems.append(Problem(name, f"toolkit_source.pypi is {pypi!r}", 'pin every requirement: ["name==version"]'))
    return problems


def validate_row(name: str, row: Any) -> list[Problem]:
    """Every problem of one row (an empty list when the row is valid)."""
    if not isinstance(row, dict):
        return [Problem(name, "is not a table", f"write it as [variants.{name}] with its keys")]
    problems = _check_keys(name, row)
    if problems and row.get("backend") not in ("cpu", "cuda"):
        return problems
    problems += _check_common(name, row)
    if row["backend"] == "cuda":
        problems += _check_toolkit(name, row) + _check_archs(name, row) + _check_cuda_misc(name, row)
        problems += _check_platform_sass(name, row)
    return problems


# ---------------------------------------------------------------- [platforms.*]

_GLIBC = re.compile(r"^2\.\d{1,2}$")


def _check_platform(name: str, row: Any) -> list[Problem]:
    where = f"platforms.{name}"
    if name not in PLATFORMS:
        return [Problem(where, "is not a known platform", f"use one of {list(PLATFORMS)}")]
    if not isinstance(row, dict):
        return [Problem(where, "is not a table", f"write it as [platforms.{name}] with its keys")]
    problems = [Problem(where, f"unknown key {k!r}", f"remove it or rename it to one of {sorted(_PLATFORM_KEYS)}")
                for k in sorted(row.keys() - _PLATFORM_KEYS)]
    floor = row.get("glibc_floor")
    if name.startswith("linux"):
        if not isinstance(floor, str) or not _GLIBC.match(floor):
            problems.append(Problem(where, f"glibc_floor is {floor!r}",
                                    'write the oldest glibc the wheel must load on, e.g. glibc_floor = "2.17"'))
        elif tuple(map(int, floor.split("."))) > (2, 24):
            problems.append(Problem(where, f"glibc_floor {floor} is above 2.24",
                                    "the wheels promise manylinux_2_24 at worst: keep the floor at 2.24 or lower"))
    elif floor is not None:
        problems.append(Problem(where, "glibc_floor on a platform without glibc", "remove it"))
    budget = row.get("wheel_budget_mib")
    if type(budget) not in (int, float) or not 0 < budget <= 1000:
        problems.append(Problem(where, f"wheel_budget_mib is {budget!r}",
                                "give the wheel's size budget in MiB, e.g. wheel_budget_mib = 12"))
    return problems


def _platforms(doc: dict) -> dict[str, Platform]:
    return {name: Platform(name, row.get("glibc_floor"), float(row["wheel_budget_mib"]))
            for name, row in doc["platforms"].items()}


# ---------------------------------------------------------------- the whole file

def _check_document(doc: dict) -> list[Problem]:
    problems = [Problem("(top)", f"unknown top-level key {k!r}",
                        "only `schema`, [platforms.*] and [variants.*] belong at the top")
                for k in sorted(doc.keys() - {"schema", "platforms", "variants"})]
    plats = doc.get("platforms")
    if not isinstance(plats, dict) or sorted(plats) != sorted(PLATFORMS):
        problems.append(Problem("(top)", f"[platforms.*] tables are {sorted(plats) if isinstance(plats, dict) else plats}",
                                f"write one [platforms.<name>] table for each of {list(PLATFORMS)}"))
    if isinstance(plats, dict):
        for name, row in plats.items():
            problems += _check_platform(name, row)
    if doc.get("schema") != SCHEMA:
        problems.append(Problem("(top)", f"schema is {doc.get('schema')!r}", f"set schema = {SCHEMA}"))
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        return problems + [Problem("(top)", "no [variants.*] tables", "add at least [variants.cpu]")]
    for name, row in variants.items():
        problems += validate_row(name, row)
    cpu_rows = [n for n, r in variants.items() if isinstance(r, dict) and r.get("backend") == "cpu"]
    if cpu_rows != ["cpu"]:
        problems.append(Problem("(top)", f"CPU rows are {cpu_rows}", "have exactly one CPU row, named [variants.cpu]"))
    return problems


def parse(text: str, path: Path = MATRIX_PATH) -> dict[str, Variant]:
    """Validate matrix.toml's text and return its variants by name; raise MatrixError listing every problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(path, [Problem("(file)", f"is not valid TOML: {exc}",
                                         "fix the syntax; a table defined twice (a duplicated row) also lands here")]
                          ) from None
    problems = _check_document(doc)
    if problems:
        raise MatrixError(path, problems)
    return {name: _variant(name, row) for name, row in doc["variants"].items()}


def _variant(name: str, row: dict) -> Variant:
    return Variant(name=name, backend=row["backend"], reason=row["reason"], platforms=tuple(row["platforms"]),
                   host_compiler=row["host_compiler"], toolkit=row.get("toolkit"), release=row.get("release"),
                   sass=tuple(row.get("sass", ())),
                   ptx=row.get("ptx"), compression=row.get("compression"), min_driver=row.get("min_driver"),
                   toolkit_source=row.get("toolkit_source", {}),
                   platform_sass={p: tuple(a) for p, a in row.get("platform_sass", {}).items()})


def load(path: Path = MATRIX_PATH) -> dict[str, Variant]:
    """Read and validate a matrix file."""
    return parse(Path(path).read_text(encoding="utf-8"), Path(path))


def load_platforms(path: Path = MATRIX_PATH) -> dict[str, Platform]:
    """The validated [platforms.*] tables of a matrix file (the whole file is validated first)."""
    text = Path(path).read_text(encoding="utf-8")
    parse(text, Path(path))
    return _platforms(tomllib.loads(text))


# ---------------------------------------------------------------- derivations

def cmake_args(variant: Variant, sass: tuple[int, ...] | None = None, *, no_ptx: bool = False) -> list[str]:
    """The -D arguments that configure CMake for one variant (optionally a subset of its SASS archs; no_ptx: a
    test build without any PTX entry, KBIT_TEST_NO_PTX)."""
    args = [f"-DKBIT_BACKEND={variant.backend}", f"-DKBIT_VARIANT={variant.name}"]
    if variant.backend == "cuda":
        chosen = tuple(sass) if sass else variant.sass
        args += [f"-DKBIT_CUDA_ARCHS={cmake_archs(chosen, None if no_ptx else max(chosen))}",
                 f"-DKBIT_CUDA_TOOLKIT={variant.toolkit}",
                 f"-DKBIT_FATBIN_COMPRESSION={variant.compression}",
                 f"-DKBIT_MIN_DRIVER={variant.min_driver}"]
        if no_ptx:
            args.append("-DKBIT_TEST_NO_PTX=ON")
    return args


def manifest_problems(variant: Variant, info: dict, *, no_ptx: bool = False) -> list[str]:
    """What a build manifest (kbit_<variant>.build.json: what the library says about itself) says that the
    variant's matrix.toml row does not; [] when they agree. A CUDA build may hold a subset of the row's SASS archs
    (ci/build_variant.py --archs); its PTX is then the newest of them, or none in a --no-ptx test build.
    ci/build_variant.py checks every build."""
    problems = []
    if info.get("variant") != variant.name or info.get("backend") != variant.backend:
        problems.append(f"variant/backend {info.get('variant')}/{info.get('backend')} vs {variant.name}/{variant.backend}")
    sass, ptx, toolkit = info.get("sass"), info.get("ptx"), info.get("toolkit")
    if variant.backend != "cuda":
        if sass != [] or ptx is not None or toolkit is not None:
            problems.append(f"a CPU build with sass {sass}, ptx {ptx}, toolkit {toolkit}")
        return problems
    if not isinstance(toolkit, str) or ".".join(toolkit.split(".")[:2]) != variant.toolkit:
        problems.append(f"toolkit {toolkit} vs {variant.toolkit}")
    if not sass or not set(sass) <= set(variant.sass) or ptx != (None if no_ptx else max(sass)):
        problems.append(f"sass {sass} ptx {ptx} vs {list(variant.sass)} ptx {variant.ptx}")
    elif sass == list(variant.sass) and ptx != variant.ptx:
        problems.append(f"ptx {ptx} vs {variant.ptx}")
    if info.get("min_driver") != variant.min_driver or info.get("compression") != variant.compression:
        problems.append(f"min_driver/compression {info.get('min_driver')}/{info.get('compression')} vs "
                        f"{variant.min_driver}/{variant.compression}")
    return problems


def newest_fetchable_cuda(variants: dict[str, Variant]) -> Variant | None:
    """The CUDA row with the newest toolkit that `nox -s toolkit-<row>` can fetch (versions compared as numbers)."""
    cuda = [v for v in variants.values() if v.backend == "cuda" and v.toolkit_source]
    return max(cuda, key=lambda v: cuda_catalog.version_tuple(v.toolkit), default=None)


COVERAGE_BEGIN = "<!-- coverage-table: generated from matrix.toml by `python ci/matrix.py coverage-table --write`; do not edit -->"
COVERAGE_END = "<!-- end coverage-table -->"


def coverage_cell(v: Variant, gpu: int) -> str:
    """How a CUDA row serves a GPU generation: SASS (runs as built), PTX-JIT (the driver compiles the PTX) or none."""
    if any(cuda_catalog.runs_sass(a, gpu) for a in v.sass):
        return "SASS"
    return "PTX-JIT" if v.ptx is not None and cuda_catalog.runs_ptx(v.ptx, gpu) else "none"


def coverage_table(variants: dict[str, Variant]) -> str:
    """The README's coverage table (markdown): GPU generation by CUDA variant."""
    cuda = [v for v in variants.values() if v.backend == "cuda"]
    lines = ["| GPU generation | " + " | ".join(f"{v.name} (CUDA {v.toolkit})" for v in cuda) + " |",
             "|---|" + "---|" * len(cuda)]
    for gen in cuda_catalog.GPU_GENERATIONS:
        lines.append(f"| {gen.name} sm_{gen.cc} | " + " | ".join(coverage_cell(v, gen.cc) for v in cuda) + " |")
    return "\n".join(lines)


def with_coverage_table(readme: str, table: str) -> str:
    """README text with the generated table between its markers (MatrixError-free: ValueError without markers)."""
    begin, end = readme.find(COVERAGE_BEGIN), readme.find(COVERAGE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"README.md has no coverage-table markers ({COVERAGE_BEGIN!r} ... {COVERAGE_END!r})")
    return readme[:begin + len(COVERAGE_BEGIN)] + "\n" + table + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/matrix.py", description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=MATRIX_PATH, help="matrix file (default: matrix.toml)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="validate the matrix")
    sub.add_parser("list", help="one line per variant")
    sub.add_parser("newest-cuda", help="the CUDA row with the newest toolkit that has a toolkit_source")
    cov = sub.add_parser("coverage-table", help="the README's GPU-generation coverage table (markdown)")
    cov.add_argument("--write", action="store_true", help="write it into README.md between its markers")
    cov.add_argument("--check", action="store_true", help="exit 1 when README.md's copy is stale")
    cm = sub.add_parser("cmake-args", help="CMake -D arguments of one variant")
    cm.add_argument("variant")
    args = parser.parse_args(argv)
    try:
        variants = load(args.matrix)
    except MatrixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        print(f"{args.matrix}: {len(variants)} variants valid: {', '.join(variants)}")
    elif args.cmd == "list":
        for v in variants.values():
            print(f"{v.name:8} {v.backend:4} {v.toolkit or '-':5} sass={list(v.sass)} ptx={v.ptx} {','.join(v.platforms)}")
    elif args.cmd == "newest-cuda":
        newest = newest_fetchable_cuda(variants)
        if newest is None:
            print("error: no CUDA row has a toolkit_source to fetch; add one to matrix.toml", file=sys.stderr)
            return 2
        print(newest.name)
    elif args.cmd == "coverage-table":
        return _coverage_command(variants, write=args.write, check=args.check)
    elif args.cmd == "cmake-args":
        if args.variant not in variants:
            print(f"error: no variant {args.variant!r} in {args.matrix}; known: {', '.join(variants)}", file=sys.stderr)
            return 2
        print("\n".join(cmake_args(variants[args.variant])))
    return 0


def _coverage_command(variants: dict[str, Variant], *, write: bool, check: bool) -> int:
    table = coverage_table(variants)
    if not (write or check):
        print(table)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    fresh = with_coverage_table(text, table)
    if check and fresh != text:
        print(f"error: {readme}'s coverage table is stale. fix: python ci/matrix.py coverage-table --write",
              file=sys.stderr)
        return 1
    if write and fresh != text:
        readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
