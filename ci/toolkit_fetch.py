"""Provision a private CUDA toolkit directory (a CUDA_HOME) from one matrix.toml row's ``toolkit_source``.

What this module owns:
  * fetching Debian packages through a *private* apt configuration (its own sources, lists, cache and an
    empty dpkg status), never touching the system's apt sources, apt state or dpkg database, and never
    installing anything;
  * extracting only the needed files of those packages and laying them out as a CUDA_HOME
    (bin/nvcc + bin/nvcc.profile relative to $(_HERE_), nvvm/, include/, lib64/);
  * installing PyPI wheels with ``pip install --no-deps --target`` and turning NVIDIA's CUDA 13 wheels into a
    CUDA_HOME (lib64 -> lib, targets/x86_64-linux links, libcudart.so link), or merging header-only wheels
    (CCCL) into a Debian tree;
  * fetching a relocatable host compiler (e.g. g++-11) from Debian the same private way;
  * proving the result works: ``nvcc --version`` reports the expected release, and a tiny .cu file compiles,
    links (static cudart) and loads;
  * idempotence: a marker file records a hash of (toolkit, source); a matching complete tree is reused
    without touching the network.

What it does not own: which toolkit/source a variant uses (matrix.toml and ci/matrix.py), CMake arguments,
arch lists, building kbit itself, and NVIDIA's own installers (variants without a ``toolkit_source`` are
built by the release pipeline and are refused here with ToolkitUnavailable).

Library use: ``provision(variant, toolkit, source, dest)`` and ``provision_host_compiler(name, dest)``.
CLI: ``python ci/toolkit_fetch.py VARIANT --dest DIR`` prints progress on stderr and the CUDA_HOME on the last
stdout line. Exit status: 0 ok, 1 provisioning failed, 2 the variant has no toolkit source on this machine.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

Log = Callable[[str], object]

# Bump when the produced layout changes: every existing tree is then rebuilt (its marker hash no longer matches).
LAYOUT_VERSION = 2
MARKER_NAME = ".kbit-toolkit.json"
DOWNLOADS_DIRNAME = "_downloads"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN_COMPONENTS = ("main", "contrib", "non-free")
MULTIARCH = "x86_64-linux-gnu"
SYSTEM_SOURCES_LIST = pathlib.Path("/etc/apt/sources.list")
SYSTEM_SOURCES_DIR = pathlib.Path("/etc/apt/sources.list.d")
MATRIX_PATH = pathlib.Path(__file__).resolve().parent.parent / "matrix.toml"
if __package__ in (None, ""):  # run as a script: make `ci` importable
    sys.path.insert(0, str(MATRIX_PATH.parent))
# Host compilers this module can fetch from Debian when they are not installed (name -> Debian suite).
PROVISIONABLE_HOST_COMPILERS = {"g++-11": "bookworm", "gcc-11": "bookworm"}

# Which members of which Debian package are extracted (tar --wildcards patterns on the dpkg-deb fsys tarfile).
_TK = "./usr/lib/nvidia-cuda-toolkit"
_LIB = f"./usr/lib/{MULTIARCH}"
DEB_MEMBERS: dict[str, tuple[str, ...]] = {
    "nvidia-cuda-toolkit": (
        f"{_TK}/bin/nvcc", f"{_TK}/bin/crt", f"{_TK}/bin/cicc", f"{_TK}/libdevice",
        "./usr/bin/ptxas", "./usr/bin/fatbinary", "./usr/bin/nvlink", "./usr/bin/cudafe++",
        "./usr/bin/bin2c", "./usr/bin/cuobjdump",
    ),
    "nvidia-cuda-dev": (
        "./usr/include", f"{_LIB}/libcudart_static.a", f"{_LIB}/libcudadevrt.a", f"{_LIB}/libculibos.a",
        f"{_LIB}/libcudart.so*", f"{_LIB}/stubs/libcuda.so",
    ),
}
_LIBCUDART_PACKAGE = re.compile(r"libcudart\d+(\.\d+)?")

# (path inside the extracted packages, path inside CUDA_HOME); every one is required.
DEBIAN_LAYOUT: tuple[tuple[str, str], ...] = (
    ("usr/lib/nvidia-cuda-toolkit/bin/nvcc", "bin/nvcc"),
    ("usr/lib/nvidia-cuda-toolkit/bin/crt", "bin/crt"),
    ("usr/bin/ptxas", "bin/ptxas"),
    ("usr/bin/fatbinary", "bin/fatbinary"),
    ("usr/bin/nvlink", "bin/nvlink"),
    ("usr/bin/cudafe++", "bin/cudafe++"),
    ("usr/bin/bin2c", "bin/bin2c"),
    ("usr/bin/cuobjdump", "bin/cuobjdump"),
    ("usr/lib/nvidia-cuda-toolkit/bin/cicc", "nvvm/bin/cicc"),
    ("usr/lib/nvidia-cuda-toolkit/libdevice", "nvvm/libdevice"),
    ("usr/include", "include"),
    (f"usr/lib/{MULTIARCH}/libcudart_static.a", "lib64/libcudart_static.a"),
    (f"usr/lib/{MULTIARCH}/libcudadevrt.a", "lib64/libcudadevrt.a"),
    (f"usr/lib/{MULTIARCH}/libculibos.a", "lib64/libculibos.a"),
    (f"usr/lib/{MULTIARCH}/stubs/libcuda.so", "lib64/stubs/libcuda.so"),
)
# Files whose presence (with a matching marker) makes a tree "complete"; relative to CUDA_HOME.
REQUIRED_FILES = (
    "bin/nvcc", "bin/nvcc.profile", "bin/ptxas", "bin/fatbinary", "bin/nvlink", "bin/cudafe++",
    "nvvm/bin/cicc", "include/cuda_runtime.h", "lib64/libcudart_static.a", "lib64/libcudadevrt.a",
)

# Debian's bin/nvcc.profile is a link to /etc/nvcc.profile with /usr paths; this one is relative to the tree.
NVCC_PROFILE_TEXT = """\
# Written by kbit ci/toolkit_fetch.py: a CUDA_HOME relative to this file (Debian's points at /usr).
TOP              = $(_HERE_)/..

NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice

LD_LIBRARY_PATH += $(TOP)/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):

INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)

LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"

CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
"""

# The verification source: a kernel (using cuda_fp16.h, which needs CCCL's nv/target on 12.x) and an
# extern "C" host function calling the runtime.
PROBE_CU = r"""
#include <cuda_runtime.h>
#include <cuda_fp16.h>

__global__ void kbit_probe_kernel(float* out, const __half* in, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half2float(in[i]) * 2.0f;
}

extern "C" int kbit_probe_device_count(void) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return -static_cast<int>(err);
  if (n > 0) kbit_probe_kernel<<<1, 1>>>(nullptr, nullptr, 0);
  return n;
}
"""

HELLO_CPP = r"""
#include <cstdio>
#include <string>
#include <vector>
int main() {
  std::vector<std::string> parts{"kbit", "-", "hello"};
  std::string joined;
  for (const auto& p : parts) joined += p;
  std::printf("%s gcc=%d\n", joined.c_str(), __GNUC__);
  return joined == "kbit-hello" ? 0 : 1;
}
"""


class ToolkitFetchError(Exception):
    """A provisioning step failed. The message names the step, what was looked at or run, and the fix."""

    def __init__(self, step: str, detail: str, fix: str, output: str = "") -> None:
        self.step, self.detail, self.fix, self.output = step, detail, fix, output
        text = f"{step} failed: {detail}"
        if output.strip():
            tail = "\n".join(output.strip().splitlines()[-40:])
            text += "\n--- output (last lines) ---\n" + tail + "\n---"
        text += f"\nfix: {fix}"
        super().__init__(text)


class ToolkitUnavailable(ToolkitFetchError):
    """The variant's toolkit cannot be obtained on this kind of machine (no toolkit_source)."""


# --------------------------------------------------------------------------------------------- helpers


def _fmt_cmd(cmd: Sequence[object]) -> str:
    """Render a command for error messages."""
    return " ".join(str(c) for c in cmd)


def run(cmd: Sequence[object], *, step: str, fix: str, cwd: pathlib.Path | None = None,
        env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a command with check=True and captured output; turn any failure into ToolkitFetchError."""
    argv = [str(c) for c in cmd]
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, errors="replace",
                              cwd=cwd, env=env, timeout=timeout)
    except FileNotFoundError as exc:
        raise ToolkitFetchError(step, f"cannot run `{_fmt_cmd(argv)}`: {exc}", fix) from exc
    except subprocess.CalledProcessError as exc:
        raise ToolkitFetchError(step, f"`{_fmt_cmd(argv)}` exited with status {exc.returncode}", fix,
                                (exc.stdout or "") + (exc.stderr or "")) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolkitFetchError(step, f"`{_fmt_cmd(argv)}` timed out after {timeout} s", fix) from exc


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed) so concurrent provisions do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _timed(log: Log, what: str) -> Iterator[None]:
    """Log `what` before and its duration after."""
    log(f"[toolkit_fetch] {what} ...")
    start = time.monotonic()
    yield
    log(f"[toolkit_fetch] {what}: done in {time.monotonic() - start:.1f} s")


def _remove_tree(path: pathlib.Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def tree_size(path: pathlib.Path) -> int:
    """Bytes used by the regular files under `path` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# ------------------------------------------------------------------------------------ marker / idempotence


def source_hash(toolkit: str, source: dict) -> str:
    """Stable hash of (toolkit, source, LAYOUT_VERSION): what a tree was built from."""
    payload = json.dumps({"toolkit": toolkit, "source": source, "layout": LAYOUT_VERSION},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def read_marker(dest: pathlib.Path) -> dict | None:
    """The marker of `dest`, or None if it is missing or unreadable."""
    try:
        data = json.loads((dest / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(dest: pathlib.Path, *, digest: str, home_rel: str, files: Iterable[str], verified: bool,
                 **extra: object) -> None:
    """Write the marker atomically. An unverified marker (written before the tree moves into place) only says
    "this directory is ours"; the verified one, written last, makes the tree reusable."""
    data = {"hash": digest, "cuda_home": home_rel, "files": sorted(files), "verified": verified, **extra}
    tmp = dest / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(dest / MARKER_NAME)


def complete_tree(dest: pathlib.Path, digest: str) -> pathlib.Path | None:
    """If `dest` holds a verified tree built from `digest` with all its files, return its CUDA_HOME."""
    marker = read_marker(dest)
    if not marker or marker.get("hash") != digest or marker.get("verified") is not True:
        return None
    home_rel = str(marker.get("cuda_home", "."))
    home = dest / home_rel
    files = marker.get("files") or []
    if not all((dest / f).exists() for f in files):
        return None
    return home if home_rel != "." else dest


def _prepare_workdir(dest: pathlib.Path) -> pathlib.Path:
    """A fresh sibling directory of `dest` to build in (same filesystem, so the final rename is cheap)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.building"
    _remove_tree(work)
    work.mkdir()
    return work


def check_dest_replaceable(dest: pathlib.Path) -> None:
    """Refuse (before any work) a `dest` that exists and was not made by this module: it is never deleted."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_dir() and not dest.is_symlink() and (read_marker(dest) is not None or not any(dest.iterdir())):
        return
    raise ToolkitFetchError(
        "check destination", f"{dest} exists and is not a tree made by ci/toolkit_fetch.py (no {MARKER_NAME})",
        f"choose another --dest, or remove {dest} yourself")


def _install_workdir(work: pathlib.Path, dest: pathlib.Path) -> None:
    """Replace `dest` (ours, or empty, or absent) by `work`."""
    check_dest_replaceable(dest)
    _remove_tree(dest)
    work.rename(dest)


# ------------------------------------------------------------------------------------ apt sources (pure)


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Parse deb822 stanzas (as in *.sources) into dicts; comments dropped, continuation lines joined."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
            continue
        if line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_one_line_sources(text: str) -> list[dict[str, str]]:
    """Parse one-line `deb [opts] URI suite comp...` entries into deb822-like dicts."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) >= 3:
            entries.append({"Types": parts[0], "URIs": parts[1], "Suites": parts[2],
                            "Components": " ".join(parts[3:])})
    return entries


def debian_archive_uris(entries: Iterable[dict[str, str]]) -> list[str]:
    """URIs of enabled `deb` entries that point at a Debian archive ("…/debian", not debian-security)."""
    uris: list[str] = []
    for entry in entries:
        if entry.get("Enabled", "yes").lower() == "no" or "deb" not in entry.get("Types", "").split():
            continue
        for uri in entry.get("URIs", "").split():
            if uri.rstrip("/").rsplit("/", 1)[-1] == "debian" and uri not in uris:
                uris.append(uri)
    return uris


def system_debian_uris(sources_list: pathlib.Path = SYSTEM_SOURCES_LIST,
                       sources_dir: pathlib.Path = SYSTEM_SOURCES_DIR) -> list[str]:
    """Read (never write) the system's apt sources and return the Debian archive URIs they use."""
    entries: list[dict[str, str]] = []
    if sources_list.is_file():
        entries += parse_one_line_sources(sources_list.read_text(errors="replace"))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".sources":
                entries += parse_deb822(path.read_text(errors="replace"))
            elif path.suffix == ".list":
                entries += parse_one_line_sources(path.read_text(errors="replace"))
    uris = debian_archive_uris(entries)
    if not uris:
        raise ToolkitFetchError(
            "find Debian mirror", f"no enabled `deb` entry with a …/debian URI in {sources_list} or {sources_dir}/*",
            "add the Debian archive to the system's apt sources (e.g. URIs: http://deb.debian.org/debian)")
    return uris


def deb822_source_text(uris: Sequence[str], suite: str) -> str:
    """The private deb822 source entry for `suite` (toolchains.md's recipe)."""
    return (
        "Types: deb\n"
        f"URIs: {' '.join(uris)}\n"
        f"Suites: {suite}\n"
        f"Components: {' '.join(DEBIAN_COMPONENTS)}\n"
        f"Signed-By: {DEBIAN_KEYRING}\n"
    )


def apt_options(root: pathlib.Path) -> list[str]:
    """`-o` options that point apt at the private state under `root` and away from the system's."""
    opts = {
        "Dir::Etc::SourceList": "/dev/null",
        "Dir::Etc::SourceParts": root / "sources",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": root / "prefs",
        "Dir::State::Lists": root / "lists",
        "Dir::Cache": root / "cache",
        "Dir::State::status": "/dev/null",
        "APT::Sandbox::User": "root",
    }
    out: list[str] = []
    for key, value in opts.items():
        out += ["-o", f"{key}={value}"]
    return out


def parse_package_spec(spec: str) -> tuple[str, str | None]:
    """'name=version' -> (name, version); 'name' -> (name, None)."""
    name, sep, version = spec.partition("=")
    if not name or (sep and not version):
        raise ToolkitFetchError("read toolkit_source", f"bad Debian package spec {spec!r}",
                                "write packages as \"name=version\" in matrix.toml")
    return name.strip(), (version.strip() or None)


def deb_filename_glob(name: str, version: str) -> str:
    """The glob of the file `apt-get download name=version` writes (':' of an epoch becomes %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_*.deb"


# --------------------------------------------------------------------------------- Debian control (pure)


@dataclass(frozen=True)
class Dependency:
    """One alternative of a Depends entry: name, optional (op, version)."""
    name: str
    op: str | None = None
    version: str | None = None


def parse_control(text: str) -> dict[str, str]:
    """First paragraph of `apt-cache show` output as a dict (continuation lines joined)."""
    stanzas = parse_deb822(text.split("\n\n", 1)[0])
    return stanzas[0] if stanzas else {}


def parse_depends(field: str) -> list[list[Dependency]]:
    """Parse a Depends/Pre-Depends field into groups of alternatives."""
    groups: list[list[Dependency]] = []
    for group in field.replace("\n", " ").split(","):
        alts = []
        for alt in group.split("|"):
            alt = alt.strip()
            if not alt:
                continue
            m = re.fullmatch(r"([A-Za-z0-9.+\-]+)(?::[a-z0-9\-]+)?\s*(?:\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?"
                             r"(?:\s*\[.*\])?(?:\s*<.*>)?", alt)
            if not m:
                raise ToolkitFetchError("parse Debian dependencies", f"cannot parse dependency {alt!r}",
                                        "report this; the Depends syntax was not understood")
            alts.append(Dependency(m.group(1), m.group(2), m.group(3)))
        if alts:
            groups.append(alts)
    return groups


def implied_runtime_packages(specs: Sequence[str], show: Callable[[str], dict[str, str] | None]) -> list[str]:
    """The libcudartN package that nvidia-cuda-dev pins, when `specs` list nvidia-cuda-dev but no libcudart*.

    nvidia-cuda-dev ships only the link libcudart.so -> libcudart.so.N; without the runtime package the link
    dangles and CMake's FindCUDAToolkit fails with "missing: CUDA_CUDART". Returns ['libcudart12=VERSION'] or [].
    """
    parsed = [parse_package_spec(s) for s in specs]
    if any(_LIBCUDART_PACKAGE.fullmatch(n) for n, _ in parsed):
        return []
    dev = next(((n, v) for n, v in parsed if n == "nvidia-cuda-dev"), None)
    if dev is None:
        return []
    record = show(f"{dev[0]}={dev[1]}" if dev[1] else dev[0])
    if not record:
        raise ToolkitFetchError("find the CUDA runtime package", f"apt-cache show {dev[0]}={dev[1]} found nothing",
                                "check the nvidia-cuda-dev pin in matrix.toml against the suite")
    for group in parse_depends(record.get("Depends", "")):
        for dep in group:
            if _LIBCUDART_PACKAGE.fullmatch(dep.name):
                return [f"{dep.name}={dep.version}" if dep.op == "=" and dep.version else dep.name]
    return []


def resolve_missing(roots: Sequence[str], *, show: Callable[[str], dict[str, str] | None],
                    installed: Callable[[str], str | None],
                    satisfies: Callable[[str, str, str], bool]) -> dict[str, str]:
    """Packages (name -> candidate version) to fetch so that `roots` have all Depends/Pre-Depends met.

    A dependency counts as met when the system has it installed at a satisfying version (`installed`,
    `satisfies`) or when it is already chosen. `show(name)` gives the candidate's control record from the
    private lists, or None when the package does not exist there.
    """
    chosen: dict[str, str] = {}
    queue = list(roots)
    while queue:
        name = queue.pop(0)
        if name in chosen:
            continue
        record = show(name)
        if not record:
            raise ToolkitFetchError("resolve host compiler packages", f"package {name!r} is not in the private lists",
                                    "check the suite in PROVISIONABLE_HOST_COMPILERS and the package name")
        chosen[name] = record["Version"]
        deps = ", ".join(filter(None, (record.get("Pre-Depends"), record.get("Depends"))))
        for group in parse_depends(deps):
            if any(_dep_met(d, chosen, installed, satisfies) for d in group):
                continue
            pick = next((d for d in group if _candidate_ok(d, show, satisfies)), None)
            if pick is None:
                raise ToolkitFetchError(
                    "resolve host compiler packages",
                    f"{name} needs {' | '.join(_dep_text(d) for d in group)}: not installed at that version and no "
                    "candidate in the private lists", "install the dependency on the system or pick another suite")
            queue.append(pick.name)
    return chosen


def _dep_text(dep: Dependency) -> str:
    """Render a dependency like Debian does."""
    return f"{dep.name} ({dep.op} {dep.version})" if dep.op else dep.name


def _dep_met(dep: Dependency, chosen: dict[str, str], installed: Callable[[str], str | None],
             satisfies: Callable[[str, str, str], bool]) -> bool:
    """Is `dep` met by a chosen package or by the system's installed version?"""
    for version in (chosen.get(dep.name), installed(dep.name)):
        if version is not None and (dep.op is None or satisfies(version, dep.op, dep.version or "")):
            return True
    return False


def _candidate_ok(dep: Dependency, show: Callable[[str], dict[str, str] | None],
                  satisfies: Callable[[str, str, str], bool]) -> bool:
    """Does the private lists' candidate of `dep` satisfy it?"""
    record = show(dep.name)
    return bool(record) and (dep.op is None or satisfies(record["Version"], dep.op, dep.version or ""))


_DPKG_OPS = {"<<": "lt", "<=": "le", "=": "eq", ">=": "ge", ">>": "gt"}


def dpkg_satisfies(have: str, op: str, want: str) -> bool:
    """`dpkg --compare-versions` (read-only) for a Depends operator."""
    try:  # check=False: the exit status is the answer
        result = subprocess.run(["dpkg", "--compare-versions", have, _DPKG_OPS[op], want],
                                capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise ToolkitFetchError("compare Debian versions", f"cannot run dpkg: {exc}", "run this on Debian") from exc
    return result.returncode == 0


def dpkg_installed_version(name: str) -> str | None:
    """The system's installed version of `name` (read from the dpkg database, never written), or None."""
    try:  # check=False: "not installed" (exit 1) is an answer, not a failure
        result = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", name],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ToolkitFetchError("query installed packages", f"cannot run dpkg-query: {exc}", "run this on Debian") from exc
    if result.returncode != 0:
        return None
    status, _, version = result.stdout.partition("|")
    return version.strip() if status.startswith("ii") and version.strip() else None


# ------------------------------------------------------------------------------------------ private apt


class PrivateApt:
    """apt-get / apt-cache with private sources, lists and cache under `root`, for one Debian suite."""

    def __init__(self, root: pathlib.Path, suite: str, log: Log = print) -> None:
        self.root, self.suite, self.log = root, suite, log

    def options(self) -> list[str]:
        """The -o options of every apt call."""
        return apt_options(self.root)

    def prepare(self) -> None:
        """Create the private directories and write the deb822 source (URIs copied from the system)."""
        for sub in ("sources", "prefs", "lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        text = deb822_source_text(system_debian_uris(), self.suite)
        path = self.root / "sources" / f"kbit-{self.suite}.sources"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)

    def has_lists(self) -> bool:
        """Were package lists already fetched?"""
        return any((self.root / "lists").glob("*_Packages*"))

    def update(self) -> None:
        """apt-get update into the private lists."""
        with _timed(self.log, f"apt-get update ({self.suite}, private lists in {self.root})"):
            run(["apt-get", *self.options(), "update"], step=f"apt-get update for {self.suite}",
                fix=f"check that the Debian mirror in {SYSTEM_SOURCES_DIR} is reachable and serves '{self.suite}'")
        if not self.has_lists():
            raise ToolkitFetchError(f"apt-get update for {self.suite}", f"no package lists in {self.root / 'lists'}",
                                    f"check that the mirror serves suite '{self.suite}'")

    def ensure_lists(self) -> None:
        """Fetch the lists once; later calls reuse them (download() refreshes them on a miss)."""
        self.prepare()
        if not self.has_lists():
            self.update()

    def show(self, name: str) -> dict[str, str] | None:
        """Candidate control record of `name` in the private lists, or None."""
        # check=False: a package missing from the lists is an answer (None), not a failure
        result = subprocess.run(["apt-cache", *self.options(), "show", "--no-all-versions", name],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0 or not result.stdout.strip():
            return None
        return parse_control(result.stdout)

    def download(self, specs: Sequence[str], cache: pathlib.Path) -> dict[str, pathlib.Path]:
        """Make sure cache holds the .deb of each 'name=version'; download only the missing ones.

        Returns name -> .deb path. Downloads land in a temporary subdirectory first, so an interrupted
        download never leaves a truncated .deb in the cache.
        """
        cache.mkdir(parents=True, exist_ok=True)
        wanted = [parse_package_spec(s) for s in specs]
        missing = [s for s, (n, v) in zip(specs, wanted) if not v or not self._cached(cache, n, v)]
        if missing:
            self.ensure_lists()
            try:
                self._download(missing, cache)
            except ToolkitFetchError:
                self.log("[toolkit_fetch] download failed with the cached lists; refreshing them and retrying")
                self.update()
                self._download(missing, cache)
        found: dict[str, pathlib.Path] = {}
        for name, version in wanted:
            path = self._cached(cache, name, version) if version else None
            if path is None and not version:
                path = max(cache.glob(f"{name}_*.deb"), default=None, key=lambda p: p.stat().st_mtime)
            if path is None:
                raise ToolkitFetchError("apt-get download", f"{name}={version} is not in {cache} after downloading",
                                        f"run apt-cache {_fmt_cmd(self.options())} policy {name} to see what the "
                                        "suite offers, then fix matrix.toml")
            found[name] = path
        return found

    @staticmethod
    def _cached(cache: pathlib.Path, name: str, version: str) -> pathlib.Path | None:
        """The cached .deb of name=version, if present."""
        return next(iter(sorted(cache.glob(deb_filename_glob(name, version)))), None)

    def _download(self, specs: Sequence[str], cache: pathlib.Path) -> None:
        """apt-get download into a temporary directory, then move the .debs into the cache."""
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
        try:
            with _timed(self.log, f"apt-get download {' '.join(specs)}"):
                run(["apt-get", *self.options(), "download", *specs], cwd=tmp, step="apt-get download",
                    fix=f"check the versions against `apt-cache {_fmt_cmd(self.options())} policy NAME` "
                        f"(suite {self.suite}) and fix matrix.toml")
            for deb in tmp.glob("*.deb"):
                deb.replace(cache / deb.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _downloads_dir(dest: pathlib.Path) -> pathlib.Path:
    """The shared download cache beside the trees."""
    return dest.parent / DOWNLOADS_DIRNAME


def _private_apt(dest: pathlib.Path, suite: str, log: Log) -> PrivateApt:
    """The private apt state for `suite` in the download cache."""
    return PrivateApt(_downloads_dir(dest) / "apt" / suite, suite, log)


# ------------------------------------------------------------------------------------------- extraction


def extract_deb(deb: pathlib.Path, into: pathlib.Path, members: Sequence[str] = (),
                excludes: Sequence[str] = ()) -> None:
    """`dpkg-deb --fsys-tarfile deb | tar -x -C into --wildcards members` (all of it if no members)."""
    into.mkdir(parents=True, exist_ok=True)
    tar_cmd = ["tar", "-x", "-C", str(into), "--no-same-owner",
               *[f"--exclude={e}" for e in excludes], "--wildcards", *members]
    fix = f"check that {deb} is a complete .deb (delete it to re-download) and holds {', '.join(members) or 'data'}"
    with tempfile.TemporaryFile() as dpkg_err:
        try:
            dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=dpkg_err)
        except FileNotFoundError as exc:
            raise ToolkitFetchError("extract .deb", f"cannot run dpkg-deb: {exc}", "run this on Debian") from exc
        try:
            tar = subprocess.run(tar_cmd, stdin=dpkg.stdout, capture_output=True, text=True, errors="replace",
                                 check=False)
        finally:
            assert dpkg.stdout is not None
            dpkg.stdout.close()
            dpkg.wait()
        dpkg_err.seek(0)
        dpkg_output = dpkg_err.read().decode(errors="replace")
    cmd_text = f"dpkg-deb --fsys-tarfile {deb} | {_fmt_cmd(tar_cmd)}"
    if dpkg.returncode != 0 and tar.returncode == 0:
        raise ToolkitFetchError("extract .deb", f"`{cmd_text}`: dpkg-deb exited with {dpkg.returncode}", fix,
                                dpkg_output)
    if tar.returncode != 0:
        raise ToolkitFetchError("extract .deb", f"`{cmd_text}`: tar exited with {tar.returncode}", fix,
                                dpkg_output + tar.stdout + tar.stderr)


def deb_members(package: str) -> tuple[str, ...]:
    """The member patterns to extract from a toolkit package; unknown packages are refused."""
    if package in DEB_MEMBERS:
        return DEB_MEMBERS[package]
    if _LIBCUDART_PACKAGE.fullmatch(package):
        return (f"{_LIB}/libcudart.so*",)
    raise ToolkitFetchError(
        "choose files to extract", f"no rule says which files of Debian package {package!r} belong in a CUDA_HOME",
        f"add {package!r} to DEB_MEMBERS in ci/toolkit_fetch.py, or drop it from matrix.toml")


def _find_in_roots(roots: Sequence[pathlib.Path], rel: str) -> pathlib.Path | None:
    """The first extracted package root that contains `rel`."""
    for root in roots:
        if (root / rel).exists() or (root / rel).is_symlink():
            return root / rel
    return None


def assemble_debian_home(roots: Sequence[pathlib.Path], home: pathlib.Path, log: Log = print) -> None:
    """Move the extracted files into a CUDA_HOME layout and write its relative bin/nvcc.profile."""
    for src_rel, dst_rel in DEBIAN_LAYOUT:
        src = _find_in_roots(roots, src_rel)
        if src is None:
            raise ToolkitFetchError("lay out CUDA_HOME", f"{src_rel} is in none of the extracted packages "
                                    f"({', '.join(str(r) for r in roots)})",
                                    "the Debian package layout changed: update DEBIAN_LAYOUT in ci/toolkit_fetch.py")
        dst = home / dst_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
    lib64 = home / "lib64"
    for root in roots:
        for so in sorted((root / "usr/lib" / MULTIARCH).glob("libcudart.so*")):
            shutil.move(str(so), str(lib64 / so.name))
    for so in sorted(lib64.glob("libcudart.so*")):
        if so.is_symlink() and not so.exists():
            log(f"[toolkit_fetch] dropping dangling {so.name} -> {os.readlink(so)} (its runtime package is not listed)")
            so.unlink()
    write_nvcc_profile(home / "bin")


def write_nvcc_profile(bindir: pathlib.Path) -> None:
    """Replace Debian's link to /etc/nvcc.profile with a profile relative to $(_HERE_)."""
    profile = bindir / "nvcc.profile"
    _remove_tree(profile)
    profile.write_text(NVCC_PROFILE_TEXT)


# ------------------------------------------------------------------------------------------------- PyPI


def pip_install(requirements: Sequence[str], target: pathlib.Path, cache: pathlib.Path, log: Log) -> None:
    """`python -m pip install --no-deps --target` from the wheel cache; download into the cache first if needed."""
    pip = [sys.executable, "-m", "pip"]
    offline = [*pip, "install", "--no-deps", "--no-index", "--find-links", str(cache), "--target", str(target),
               *requirements]
    fix = "check the requirement pins in matrix.toml against PyPI, and that PyPI is reachable"
    cache.mkdir(parents=True, exist_ok=True)
    if all(cached_wheel(cache, r) for r in requirements):
        try:
            with _timed(log, f"pip install (cached wheels) {' '.join(requirements)}"):
                run(offline, step="pip install from the wheel cache", fix=fix)
            return
        except ToolkitFetchError:
            log("[toolkit_fetch] wheel cache incomplete; downloading")
            _remove_tree(target)
    with _timed(log, f"pip download {' '.join(requirements)}"):
        run([*pip, "download", "--no-deps", "--only-binary=:all:", "--dest", str(cache), *requirements],
            step="pip download", fix=fix)
    with _timed(log, f"pip install --no-deps --target {target}"):
        run(offline, step="pip install --no-deps --target", fix=fix)


def cached_wheel(cache: pathlib.Path, requirement: str) -> pathlib.Path | None:
    """The wheel of a pinned 'name==version' requirement in the cache, if any (unpinned ones never match)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement)
    if not m:
        return None
    name = re.sub(r"[-_.]+", "_", m.group(1)).lower()
    return next(iter(sorted(cache.glob(f"{name}-{m.group(2)}-*.whl"))), None)


def wheel_include_dirs(target: pathlib.Path) -> list[pathlib.Path]:
    """include/ directories of NVIDIA wheels installed under `target` (nvidia/*/include)."""
    return sorted(p for p in (target / "nvidia").glob("*/include") if p.is_dir())


def merge_headers(src: pathlib.Path, include: pathlib.Path) -> list[str]:
    """Copy header subtrees of a wheel's include dir into `include` (no python files); return what was merged."""
    merged = []
    for item in sorted(src.iterdir()):
        if item.name in ("__init__.py", "__pycache__"):
            continue
        if item.is_dir():
            shutil.copytree(item, include / item.name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
        else:
            shutil.copy2(item, include / item.name)
        merged.append(item.name)
    return merged


def link_wheel_cuda_home(home: pathlib.Path) -> None:
    """Make NVIDIA's CUDA 13 wheel tree look like a CUDA_HOME: lib64 -> lib, targets links, libcudart.so."""
    if not (home / "lib64").exists():
        (home / "lib64").symlink_to("lib")
    targets = home / "targets" / "x86_64-linux"
    targets.mkdir(parents=True, exist_ok=True)
    for name in ("include", "lib"):
        if not (targets / name).exists():
            (targets / name).symlink_to(f"../../{name}")
    if not (home / "lib" / "libcudart.so").exists():
        versioned = sorted(p.name for p in (home / "lib").glob("libcudart.so.*"))
        if not versioned:
            raise ToolkitFetchError("lay out CUDA_HOME", f"no libcudart.so.N in {home / 'lib'}",
                                    "add nvidia-cuda-runtime to the pypi requirements")
        (home / "lib" / "libcudart.so").symlink_to(versioned[0])


def find_wheel_cuda_home(target: pathlib.Path) -> pathlib.Path:
    """The directory under `target` holding bin/nvcc (nvidia/cu13 for CUDA 13 wheels)."""
    found = sorted(p.parent.parent for p in (target / "nvidia").glob("*/bin/nvcc"))
    if len(found) != 1:
        raise ToolkitFetchError(
            "lay out CUDA_HOME", f"expected exactly one nvidia/*/bin/nvcc under {target}, found {len(found)}",
            "the pypi requirements must include a full nvcc (CUDA 13's nvidia-cuda-nvcc + nvidia-cuda-crt + "
            "nvidia-nvvm); PyPI's 12.x nvidia-cuda-nvcc-cu12 has no nvcc, so 12.x needs the Debian source")
    return found[0]


# ------------------------------------------------------------------------------------------ verification


def parse_nvcc_release(text: str) -> tuple[str, str]:
    """`nvcc --version` output -> ("12.4", "12.4.131") from 'release 12.4, V12.4.131'."""
    m = re.search(r"release (\d+\.\d+), V(\d+(?:\.\d+)+)", text)
    if not m:
        raise ToolkitFetchError("check nvcc version", "no 'release X.Y, VX.Y.Z' line in `nvcc --version` output",
                                "the tree's bin/nvcc is not a CUDA nvcc; delete the tree and provision again", text)
    return m.group(1), m.group(2)


def _nvcc_env() -> dict[str, str]:
    """The environment for nvcc runs, without variables that would inject flags."""
    env = dict(os.environ)
    for var in ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN"):
        env.pop(var, None)
    return env


def check_nvcc_version(home: pathlib.Path, toolkit: str) -> str:
    """Require bin/nvcc to report release == toolkit; return its 'release …' line."""
    nvcc = home / "bin" / "nvcc"
    out = run([nvcc, "--version"], step="nvcc --version", env=_nvcc_env(),
              fix=f"delete {home} and provision again; check bin/, nvvm/ and bin/nvcc.profile").stdout
    release, _full = parse_nvcc_release(out)
    if release != toolkit:
        raise ToolkitFetchError("check nvcc version", f"{nvcc} reports release {release}, matrix.toml wants {toolkit}",
                                "fix the toolkit_source pins of this variant in matrix.toml", out)
    return next(line.strip() for line in out.splitlines() if "release" in line)


def verify_toolkit(home: pathlib.Path, toolkit: str, compiler: str, log: Log = print) -> str:
    """nvcc --version must match; a kernel + cudaGetDeviceCount wrapper must compile, link and load."""
    line = check_nvcc_version(home, toolkit)
    log(f"[toolkit_fetch] {home / 'bin' / 'nvcc'}: {line}")
    with tempfile.TemporaryDirectory(prefix="kbit-probe-") as tmp:
        src = pathlib.Path(tmp) / "probe.cu"
        lib = pathlib.Path(tmp) / "libprobe.so"
        src.write_text(PROBE_CU)
        cmd = [home / "bin" / "nvcc", "-shared", "-Xcompiler", "-fPIC", "-arch=sm_80", "-cudart", "static",
               "-ccbin", compiler, "-o", lib, src]
        with _timed(log, "compile+link probe .cu"):
            run(cmd, step="compile the probe .cu", env=_nvcc_env(),
                fix="read the compiler output above: 'nv/target' missing means the CCCL headers were not merged; "
                    "'unsupported GNU version' means the host compiler is too new for this toolkit")
        probe = ("import ctypes, sys; n = ctypes.CDLL(sys.argv[1]).kbit_probe_device_count(); "
                 "print(n)")
        out = run([sys.executable, "-c", probe, lib], step="load the probe library",
                  fix="the library links but does not load: check `ldd` on it and the static cudart").stdout
        log(f"[toolkit_fetch] probe loaded; kbit_probe_device_count() = {out.strip()} "
            "(negative = CUDA error code, e.g. -35 without a driver)")
    return line


# -------------------------------------------------------------------------------------- host compilers


def default_host_compiler(toolkit: str) -> str:
    """The host compiler toolchains.md measured for a toolkit: g++-11 for 11.x, else g++-12."""
    return "g++-11" if toolkit.split(".")[0] == "11" else "g++-12"


def resolve_host_compiler(name: str, tools_dir: pathlib.Path, log: Log = print) -> str:
    """An executable for `name`: an existing path, one on PATH, or one fetched by provision_host_compiler."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise ToolkitFetchError("find host compiler", f"{name} is not an executable file", "pass an existing compiler")
    found = shutil.which(name)
    if found:
        return found
    if name in PROVISIONABLE_HOST_COMPILERS:
        return str(provision_host_compiler(name, tools_dir / f"host-{name}", log=log))
    raise ToolkitFetchError("find host compiler", f"{name} is not on PATH and cannot be fetched by this module",
                            f"apt-get install {name}")


def fix_dangling_links(root: pathlib.Path, system_root: pathlib.Path = pathlib.Path("/")) -> list[str]:
    """Point relative links that dangle inside an extracted tree at the same path on the system, if it exists.

    Example: usr/lib/gcc/x86_64-linux-gnu/11/libstdc++.so -> ../../../x86_64-linux-gnu/libstdc++.so.6 (the
    runtime comes from the system's newer libstdc++6). Returns the links that were rewritten.
    """
    fixed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = pathlib.Path(dirpath) / name
            if not link.is_symlink() or link.exists():
                continue
            target = os.readlink(link)
            if os.path.isabs(target):
                continue
            system_path = system_root / os.path.normpath(os.path.join(os.path.relpath(dirpath, root), target))
            if system_path.exists():
                link.unlink()
                link.symlink_to(system_path)
                fixed.append(f"{link.relative_to(root)} -> {system_path}")
    return fixed


def check_host_compiler(exe: pathlib.Path, major: str) -> str:
    """Compile, link and run a hello world with <string> and <vector>; return its output."""
    with tempfile.TemporaryDirectory(prefix="kbit-gxx-") as tmp:
        src = pathlib.Path(tmp) / "hello.cpp"
        out = pathlib.Path(tmp) / "hello"
        src.write_text(HELLO_CPP)
        run([exe, "-O1", "-o", out, src], step=f"compile hello.cpp with {exe}",
            fix=f"the extracted compiler is incomplete: delete {exe.parents[2]} and provision again, "
                f"or apt-get install {exe.name}")
        text = run([out], step="run hello (built by the fetched compiler)",
                   fix=f"apt-get install {exe.name}").stdout.strip()
    if text != f"kbit-hello gcc={major}":
        raise ToolkitFetchError("check host compiler", f"{exe} built a program that printed {text!r}",
                                f"apt-get install {exe.name}")
    return text


def provision_host_compiler(name: str, dest: pathlib.Path, *, log: Log = print) -> pathlib.Path:
    """Fetch a GCC (e.g. "g++-11") from Debian with the private apt config and extract it into `dest`.

    The packages are g++-N plus whatever its Depends/Pre-Depends need that the system lacks at the right
    version (found with apt-cache show under the private config and dpkg-query on the system). Nothing is
    installed: the .debs are extracted (minus usr/share), dangling relative links are pointed at the
    system's files (libstdc++.so.6 etc.), and a hello world must compile, link and run. Idempotent via a
    marker. Returns the path of the working compiler executable (dest/usr/bin/NAME).
    """
    m = re.fullmatch(r"(g\+\+|gcc)-(\d+)", name)
    if not m or name not in PROVISIONABLE_HOST_COMPILERS:
        raise ToolkitFetchError("provision host compiler", f"{name!r} is not one of "
                                f"{sorted(PROVISIONABLE_HOST_COMPILERS)}", f"apt-get install {name}")
    suite, major = PROVISIONABLE_HOST_COMPILERS[name], m.group(2)
    dest = pathlib.Path(dest).absolute()
    digest = source_hash(name, {"debian": {"suite": suite, "packages": [f"{m.group(1)}-{major}"]}})
    exe_rel = f"usr/bin/{name}"
    with _locked(dest.parent / f".{dest.name}.lock"):
        if complete_tree(dest, digest) is not None:
            log(f"[toolkit_fetch] {name}: reusing {dest}")
            return dest / exe_rel
        check_dest_replaceable(dest)
        apt = _private_apt(dest, suite, log)
        with _locked(apt.root / ".lock"):
            apt.ensure_lists()
            packages = resolve_missing([f"g++-{major}" if m.group(1) == "g++" else f"gcc-{major}"],
                                       show=apt.show, installed=dpkg_installed_version, satisfies=dpkg_satisfies)
            log(f"[toolkit_fetch] {name}: packages the system lacks: "
                + ", ".join(f"{n}={v}" for n, v in sorted(packages.items())))
            debs = apt.download([f"{n}={v}" for n, v in sorted(packages.items())], _downloads_dir(dest) / "debs")
        work = _prepare_workdir(dest)
        with _timed(log, f"extract {len(debs)} packages of {name}"):
            for deb in debs.values():
                extract_deb(deb, work, ("./usr",), excludes=("./usr/share",))
        for line in fix_dangling_links(work):
            log(f"[toolkit_fetch] relinked {line}")
        if not (work / exe_rel).exists():
            raise ToolkitFetchError("provision host compiler", f"{work / exe_rel} missing after extraction",
                                    f"apt-get install {name}")
        packages_text = {n: v for n, v in sorted(packages.items())}
        write_marker(work, digest=digest, home_rel=".", files=[exe_rel], verified=False, packages=packages_text)
        _install_workdir(work, dest)
        check_host_compiler(dest / exe_rel, major)
        write_marker(dest, digest=digest, home_rel=".", files=[exe_rel], verified=True, packages=packages_text)
        log(f"[toolkit_fetch] {name}: {dest / exe_rel} compiles and links C++ ({tree_size(dest) / 1e6:.0f} MB)")
        return dest / exe_rel


# ------------------------------------------------------------------------------------------ provisioning


def _build_debian_tree(work: pathlib.Path, dest: pathlib.Path, debian: dict, log: Log) -> None:
    """Download (cached) and extract the Debian packages of `debian` into a CUDA_HOME at `work`."""
    suite, specs = debian.get("suite"), list(debian.get("packages") or [])
    if not suite or not specs:
        raise ToolkitFetchError("read toolkit_source", f"debian table {debian!r} needs 'suite' and 'packages'",
                                "fix the variant's toolkit_source in matrix.toml")
    apt = _private_apt(dest, suite, log)
    with _locked(apt.root / ".lock"):
        apt.ensure_lists()
        extra = implied_runtime_packages(specs, apt.show)
        if extra:
            log(f"[toolkit_fetch] adding {', '.join(extra)} (nvidia-cuda-dev's libcudart.so link points into it)")
        specs = specs + extra
        names = [parse_package_spec(s)[0] for s in specs]
        members = {n: deb_members(n) for n in names}
        debs = apt.download(specs, _downloads_dir(dest) / "debs")
    staging = work / ".staging"
    roots = [staging / n for n in names]
    with _timed(log, f"extract {', '.join(d.name for d in debs.values())}"):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(extract_deb, debs[n], staging / n, members[n]) for n in names]
            for job in jobs:
                job.result()
    assemble_debian_home(roots, work, log)
    shutil.rmtree(staging)


def _build_pypi(work: pathlib.Path, dest: pathlib.Path, requirements: Sequence[str], has_debian: bool,
                log: Log) -> str:
    """Install the wheels; return the CUDA_HOME relative to `work` ('.' when merged into a Debian tree)."""
    cache = _downloads_dir(dest) / "pypi"
    if not has_debian:
        pip_install(requirements, work, cache, log)
        home = find_wheel_cuda_home(work)
        link_wheel_cuda_home(home)
        return str(home.relative_to(work))
    target = work / ".pypi"
    pip_install(requirements, target, cache, log)
    includes = wheel_include_dirs(target)
    if not includes:
        raise ToolkitFetchError("merge PyPI headers", f"no nvidia/*/include under {target} from {list(requirements)}",
                                "with a debian source, pypi should only list header wheels like nvidia-cuda-cccl-cu12")
    for inc in includes:
        merged = merge_headers(inc, work / "include")
        log(f"[toolkit_fetch] merged {', '.join(merged)} from {inc.parent.name} into include/")
    shutil.rmtree(target)
    return "."


def provision(variant: str, toolkit: str, source: dict, dest: pathlib.Path, *, log: Log = print,
              host_compiler: str | None = None) -> pathlib.Path:
    """Make dest a CUDA_HOME for `toolkit` (e.g. "12.4") from `source` (the toolkit_source table: optional
    debian={suite, packages}, optional pypi=[requirements]); return the path whose bin/nvcc to use. Idempotent:
    a marker file records a hash of (toolkit, source); a matching complete tree is reused in well under a second.

    The tree is built in a sibling directory, moved to `dest`, verified (nvcc --version == toolkit; a probe .cu
    compiles with `-ccbin host_compiler`, default g++-11 for 11.x and g++-12 otherwise, fetched from Debian
    when missing), and only then gets its marker. Downloads are cached in dest.parent/_downloads.
    """
    dest = pathlib.Path(dest).absolute()
    if not source or not (source.get("debian") or source.get("pypi")):
        raise ToolkitUnavailable(
            "read toolkit_source", f"variant {variant} (CUDA {toolkit}) has no toolkit_source: it is not obtainable "
            "from Debian or PyPI on this machine", "skip this variant here; the release pipeline builds it with "
            "NVIDIA's toolkit")
    digest = source_hash(toolkit, source)
    with _locked(dest.parent / f".{dest.name}.lock"):
        reused = complete_tree(dest, digest)
        if reused is not None:
            log(f"[toolkit_fetch] {variant}: reusing {reused} (marker matches)")
            return reused
        check_dest_replaceable(dest)
        log(f"[toolkit_fetch] {variant}: provisioning CUDA {toolkit} into {dest}")
        start = time.monotonic()
        compiler = resolve_host_compiler(host_compiler or default_host_compiler(toolkit), dest.parent, log)
        work = _prepare_workdir(dest)
        home_rel = "."
        if source.get("debian"):
            _build_debian_tree(work, dest, source["debian"], log)
        if source.get("pypi"):
            home_rel = _build_pypi(work, dest, list(source["pypi"]), bool(source.get("debian")), log)
        files = [os.path.normpath(os.path.join(home_rel, f)) for f in REQUIRED_FILES]
        info = {"variant": variant, "toolkit": toolkit, "source": source, "host_compiler": compiler}
        write_marker(work, digest=digest, home_rel=home_rel, files=files, verified=False, **info)
        _install_workdir(work, dest)
        home = dest if home_rel == "." else dest / home_rel
        line = verify_toolkit(home, toolkit, compiler, log)
        write_marker(dest, digest=digest, home_rel=home_rel, files=files, verified=True, nvcc_version=line, **info)
        log(f"[toolkit_fetch] {variant}: CUDA_HOME {home} ready in {time.monotonic() - start:.1f} s, "
            f"{tree_size(dest) / 1e6:.0f} MB")
        return home


# ------------------------------------------------------------------------------------------------- CLI


def load_variant(variant: str, matrix_path: pathlib.Path = MATRIX_PATH) -> dict:
    """The validated [variants.VARIANT] row of matrix.toml (ci/matrix.py validates; this module only reads)."""
    from ci import matrix

    try:
        variants = matrix.load(matrix_path)
    except matrix.MatrixError as exc:
        raise ToolkitFetchError("read matrix.toml", str(exc), "fix matrix.toml") from exc
    if variant not in variants:
        raise ToolkitFetchError("read matrix.toml", f"no [variants.{variant}] in {matrix_path}",
                                f"use one of: {', '.join(sorted(variants))}")
    row = variants[variant]
    if row.backend != "cuda":
        raise ToolkitUnavailable("read matrix.toml", f"variant {variant} is not a CUDA variant",
                                 "nothing to provision for it")
    return {"toolkit": row.toolkit, "toolkit_source": row.toolkit_source, "host_compiler": row.host_compiler}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: provision VARIANT's toolkit into --dest; print the CUDA_HOME last on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("variant", help="a [variants.*] name of matrix.toml, e.g. cuda124")
    parser.add_argument("--dest", required=True, type=pathlib.Path, help="the directory to make a CUDA_HOME")
    parser.add_argument("--matrix", type=pathlib.Path, default=MATRIX_PATH, help="matrix.toml to read")
    parser.add_argument("--host-compiler", help="nvcc -ccbin for the check (default: the row's host_compiler)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        row = load_variant(args.variant, args.matrix)
        home = provision(args.variant, row["toolkit"], row.get("toolkit_source") or {}, args.dest, log=log,
                         host_compiler=args.host_compiler or row.get("host_compiler"))
    except ToolkitUnavailable as exc:
        log(f"error: {exc}")
        return 2
    except ToolkitFetchError as exc:
        log(f"error: {exc}")
        return 1
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
