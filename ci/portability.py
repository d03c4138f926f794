"""Whether a Linux library loads on every system its platform's wheel tag promises.

This module owns the judgement, for one library and one matrix.toml platform: the platform's glibc_floor names
a manylinux policy (2.17 -> manylinux_2_17), and the library must depend only on that policy's whitelisted
libraries (or the platform's dynamic loader), and ask for no GLIBC_/GLIBCXX_/CXXABI_/GCC_ version that the
policy does not list. The whitelist and the versions are read from auditwheel's own policy file, never
written here. It also refuses a non-weak unversioned reference, which can hide a newer glibc (the link uses
-Wl,-z,defs so that none exists). Reading the ELF file is ci/elfdeps.py; the installed package never imports
this (ci/) module. auditwheel itself still proves the wheel's tag; this check names the offending symbol and
library per library, at build time.

CLI:  python ci/portability.py LIB... [--platform linux-x86_64]   (exit 1 when any library fails)
API:  check(path, platform) -> list[Problem];  summary(path) -> Summary
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import elfdeps  # noqa: E402

PREFIXES = ("GLIBC", "GLIBCXX", "CXXABI", "GCC")
_ARCH = {"linux-x86_64": "x86_64", "linux-aarch64": "aarch64"}
_LOADERS = {"linux-x86_64": "ld-linux-x86-64.so.2", "linux-aarch64": "ld-linux-aarch64.so.1"}


class PortabilityError(Exception):
    """The check cannot run (no auditwheel, unknown platform, unreadable library); the message has the fix."""


@dataclass(frozen=True)
class Problem:
    """One reason a library would not load on the oldest system of its platform's policy."""

    library: Path
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.library}: {self.what}\n    fix: {self.fix}"


@dataclass(frozen=True)
class Summary:
    """The highest version a library asks for per prefix, and its DT_NEEDED list."""

    highest: dict[str, str]
    needed: tuple[str, ...]

    def __str__(self) -> str:
        versions = ", ".join(f"{p} {self.highest[p]}" for p in PREFIXES if p in self.highest) or "no versions"
        return f"{versions}; NEEDED {', '.join(self.needed) or '(none)'}"


@dataclass(frozen=True)
class Policy:
    name: str
    whitelist: frozenset[str]
    versions: dict[str, frozenset[str]]  # prefix -> every version the policy allows
    blacklist: dict[str, frozenset[str]]  # library -> symbols the policy refuses


def policy_name(platform: str) -> str:
    """The manylinux policy of a platform's glibc_floor (matrix.toml): 2.17 -> manylinux_2_17."""
    from ci import matrix

    plat = matrix.load_platforms().get(platform)
    if plat is None or not plat.glibc_floor:
        raise PortabilityError(f"matrix.toml has no [platforms.{platform}] glibc_floor. fix: add it, e.g. \"2.17\"")
    return "manylinux_" + plat.glibc_floor.replace(".", "_")


@cache
def load_policy(name: str, arch: str) -> Policy:
    """One policy of auditwheel's manylinux-policy.json (from the installed auditwheel package)."""
    spec = importlib.util.find_spec("auditwheel")
    if spec is None or not spec.submodule_search_locations:
        raise PortabilityError("auditwheel is not installed; its policy file is the whitelist. fix: pip install auditwheel")
    path = Path(list(spec.submodule_search_locations)[0]) / "policy" / "manylinux-policy.json"
    for entry in json.loads(path.read_text(encoding="utf-8")):
        if entry["name"] == name or name in entry.get("aliases", []):
            versions = entry["symbol_versions"].get(arch)
            if versions is None:
                break
            return Policy(entry["name"], frozenset(entry["lib_whitelist"]),
                          {k: frozenset(v) for k, v in versions.items()},
                          {k: frozenset(v) for k, v in entry.get("blacklist", {}).items()})
    raise PortabilityError(f"auditwheel's {path} has no policy {name} for {arch}. fix: a newer auditwheel, or a "
                           f"glibc_floor that names a manylinux policy")


def summary(path: Path) -> Summary:
    """The highest GLIBC_/GLIBCXX_/CXXABI_/GCC_ version `path` asks for, and what it NEEDs."""
    info = elfdeps.read(Path(path))
    highest: dict[str, str] = {}
    for need in info.needs:
        prefix, version = _split(need.version)
        if prefix in PREFIXES and version and elfdeps.version_key(version) > elfdeps.version_key(highest.get(prefix, "0")):
            highest[prefix] = version
    return Summary(highest, info.needed)


def _split(version: str | None) -> tuple[str | None, str | None]:
    if not version or "_" not in version:
        return None, None
    prefix, _, rest = version.partition("_")
    return prefix, rest


def check(path: Path, platform: str = "linux-x86_64") -> list[Problem]:
    """Every reason `path` would not load on the oldest system of `platform`'s manylinux policy; [] when none."""
    if platform not in _ARCH:
        raise PortabilityError(f"no manylinux policy applies to platform {platform!r}; Linux ones: {', '.join(_ARCH)}")
    path = Path(path)
    try:
        info = elfdeps.read(path)
    except elfdeps.ElfError as exc:
        raise PortabilityError(str(exc)) from exc
    policy = load_policy(policy_name(platform), _ARCH[platform])
    problems = [Problem(path, f"NEEDs {lib}, which {policy.name} does not allow (not in auditwheel's whitelist)",
                        _library_fix(lib)) for lib in info.needed
                if lib not in policy.whitelist and lib != _LOADERS[platform]]
    problems += _version_problems(path, info, policy)
    return problems


def _library_fix(lib: str) -> str:
    if lib.startswith("libgomp"):
        return "do not use OpenMP in the CPU library (csrc/cpu/parallel.h threads with pthreads)"
    if lib.startswith("libcudart"):
        return "link the CUDA runtime statically (CUDA_RUNTIME_LIBRARY Static)"
    return "link it statically or drop the dependency; auditwheel would have to graft it into the wheel"


def _version_problems(path: Path, info: elfdeps.DynamicInfo, policy: Policy) -> list[Problem]:
    worst: dict[tuple[str, str], elfdeps.Need] = {}
    unversioned = []
    for need in info.needs:
        prefix, version = _split(need.version)
        if need.version is None:
            if not need.weak:
                unversioned.append(need.symbol)
        elif prefix in policy.versions and version not in policy.versions[prefix]:
            worst.setdefault((prefix, version), need)
        if need.library in policy.blacklist and need.symbol in policy.blacklist[need.library]:
            worst.setdefault(("blacklisted", need.symbol), need)
    problems = []
    for (prefix, _version), need in sorted(worst.items(), key=lambda kv: (kv[0][0], elfdeps.version_key(kv[0][1]))):
        if prefix == "blacklisted":
            problems.append(Problem(path, f"uses {need.symbol} from {need.library}, which {policy.name} refuses",
                                    "do not call it"))
            continue
        problems.append(Problem(path, f"asks for {need.symbol}@{need.version} (from {need.library}), above what "
                                      f"{policy.name} allows", _version_fix(prefix)))
    if unversioned:
        problems.append(Problem(path, f"has unversioned undefined symbols ({', '.join(sorted(unversioned)[:5])}), "
                                      "which can hide a newer glibc", "link with -Wl,-z,defs (CMakeLists.txt does)"))
    return problems


def _version_fix(prefix: str) -> str:
    if prefix == "GLIBC":
        return ("link through ci/glibc_pin.py (cmake/KbitPortability.cmake), which pins glibc references to the "
                "floor; a symbol with no old version must not be used")
    return ("avoid the libstdc++/libgcc feature that needs it (sized delete: -fno-sized-deallocation; "
            "std::logic_error(const char*), std::thread: GLIBCXX_3.4.21/22), or raise glibc_floor in matrix.toml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/portability.py", description=__doc__.splitlines()[0])
    parser.add_argument("libraries", nargs="+", type=Path)
    parser.add_argument("--platform", default="linux-x86_64")
    args = parser.parse_args(argv)
    failed = 0
    try:
        for lib in args.libraries:
            print(f"{lib}: {summary(lib)}")
            problems = check(lib, args.platform)
            for p in problems:
                print(f"  problem: {p.what}\n    fix: {p.fix}")
            failed += bool(problems)
        policy = policy_name(args.platform)
    except (PortabilityError, elfdeps.ElfError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(args.libraries) - failed} of {len(args.libraries)} libraries within {policy} ({args.platform})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
