"""`nox -s smoke-old-glibc`: every kbit library of a wheel (or a folder), loaded and used on an older Linux.

This module owns the old system and the comparison: a Debian bullseye root (glibc 2.31, the oldest suite
Debian's archive serves), made once with debootstrap in a cache folder outside the clone and reused (a marker
file written last tells a finished root from a half-built one, which is rebuilt). It runs ci/smoke_probe.py with
bullseye's own python3 inside the root (chroot) and with this Python on the host, and fails when a library
does not load there (naming the missing library or symbol: the loader's message, and ci/portability.py's
findings), when kbit_abi_version or kbit_build_info disagree with the manifest beside the library, when a CUDA
library's kbit_device_count is not the clean "no driver" status, or when the CPU library's 8-bit and 4-bit
round trips give other bytes in the root than on the host. It does not build libraries or wheels.

CLI:  python ci/smoke_old_glibc.py [WHEEL_OR_FOLDER] [--root DIR]
      default target: the newest dist/kbit-*.whl; default root: $KBIT_BULLSEYE_ROOT or ~/.cache/kbit/bullseye-root
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bullseye"
MIRROR = "http://deb.debian.org/debian"
MARKER = ".kbit-root-complete"
PROBE = Path(__file__).resolve().parent / "smoke_probe.py"
KBIT_ERR_NO_DRIVER = 2  # csrc/kbit.h


class SmokeError(Exception):
    """The smoke test could not run, or a library failed it; the message names what and the fix."""


def default_root() -> Path:
    return Path(os.environ.get("KBIT_BULLSEYE_ROOT") or Path.home() / ".cache" / "kbit" / f"{SUITE}-root")


def ensure_debootstrap(log=print) -> str:
    found = shutil.which("debootstrap") or (Path("/usr/sbin/debootstrap").is_file() and "/usr/sbin/debootstrap")
    if found:
        return str(found)
    if os.geteuid() != 0:
        raise SmokeError("debootstrap is not installed and this is not root. fix: apt-get install debootstrap")
    log("[smoke] installing debootstrap (apt-get)")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        if subprocess.run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}).returncode != 0:
            raise SmokeError(f"`{' '.join(cmd)}` failed. fix: install debootstrap by hand")
    return shutil.which("debootstrap") or "/usr/sbin/debootstrap"


def ensure_root(root: Path, log=print) -> float:
    """A finished bullseye root at `root` (made now if missing or half-built); the seconds it took."""
    if (root / MARKER).is_file():
        log(f"[smoke] reusing the {SUITE} root {root}")
        return 0.0
    if os.geteuid() != 0:
        raise SmokeError(f"building the {SUITE} root needs root (debootstrap, chroot). fix: run as root")
    if root.exists() and any(root.iterdir()):
        if not ((root / "debootstrap").exists() or (root / "etc" / "debian_version").exists()):
            raise SmokeError(f"{root} exists and is not a Debian root this tool made. fix: remove it or set "
                             f"KBIT_BULLSEYE_ROOT to another folder")
        log(f"[smoke] {root} is half-built (no {MARKER}); removing it")
        shutil.rmtree(root)
    debootstrap = ensure_debootstrap(log)
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cmd = [debootstrap, "--variant=minbase", "--include=python3", SUITE, str(root), MIRROR]
    log("[smoke] $ " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SmokeError(f"debootstrap failed ({done.returncode}): {done.stdout[-1500:]}{done.stderr[-1500:]}")
    seconds = time.perf_counter() - start
    glibc = _chroot(root, ["/usr/bin/ldd", "--version"]).stdout.splitlines()[0]
    (root / MARKER).write_text(json.dumps({"suite": SUITE, "glibc": glibc, "seconds": round(seconds, 1)}) + "\n")
    log(f"[smoke] made the {SUITE} root in {seconds:.0f} s ({glibc})")
    return seconds


def _chroot(root: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


def newest_wheel(dist: Path = ROOT / "dist") -> Path:
    wheels = sorted(dist.glob("kbit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SmokeError(f"no kbit-*.whl in {dist}. fix: build one (nox -s wheel), or pass a wheel or a folder "
                         f"of libraries (e.g. build/staging/linux-x86_64/kbit)")
    return wheels[-1]


def stage(target: Path, dest: Path) -> list[str]:
    """Copy the libraries and manifests of a wheel or folder into dest; their file names."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    names = []
    if target.is_file():
        with zipfile.ZipFile(target) as wheel:
            for item in wheel.namelist():
                base = item.rsplit("/", 1)[-1]
                if item.startswith("kbit/") and (base.endswith(".so") or base.endswith(".build.json")):
                    (dest / base).write_bytes(wheel.read(item))
                    names.append(base)
    elif target.is_dir():
        for p in sorted(target.iterdir()):
            if p.name.endswith((".so", ".build.json")):
                shutil.copy2(p, dest / p.name)
                names.append(p.name)
    else:
        raise SmokeError(f"{target} is neither a wheel nor a folder. fix: pass a kbit wheel or a library folder")
    if not any(n.endswith(".so") for n in names):
        raise SmokeError(f"{target} holds no kbit library (.so). fix: a wheel or folder with libkbit_*.so")
    return names


def run_probe(python: list[str], folder: str, *, root: Path | None = None) -> dict:
    cmd = [*python, folder]
    done = _chroot(root, cmd) if root else subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SmokeError(f"the probe failed ({'in the root' if root else 'on the host'}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def judge(inside: dict, host: dict, staged: Path) -> list[str]:
    """Every failure, one line each (library first)."""
    host_by = {r["library"]: r for r in host["libraries"]}
    failures = [f"{name}: has no kbit_<variant>.build.json manifest beside it" for name in inside["without_manifest"]]
    for r in inside["libraries"]:
        name, manifest = r["library"], r["manifest"]
        if "load_error" in r:
            failures.append(f"{name}: does not load on {SUITE}: {r['load_error']}" + _portability_hint(staged / name))
            continue
        if r["abi"] != manifest.get("abi"):
            failures.append(f"{name}: kbit_abi_version() = {r['abi']}, the manifest says {manifest.get('abi')}")
        if r["build_info"] != manifest:
            failures.append(f"{name}: kbit_build_info() differs from its manifest: {r['build_info']} vs {manifest}")
        if manifest.get("backend") == "cuda":
            if r["device_count_status"] != KBIT_ERR_NO_DRIVER or r["device_count"] != 0:
                failures.append(f"{name}: kbit_device_count gave status {r['device_count_status']} count "
                                f"{r['device_count']} ({r['last_error']!r}), not KBIT_ERR_NO_DRIVER with 0")
        elif "round_trip_error" in r:
            failures.append(f"{name}: {r['round_trip_error']}")
        elif r.get("round_trips") != host_by.get(name, {}).get("round_trips"):
            failures.append(f"{name}: round trips differ: {SUITE} {r.get('round_trips')} vs host "
                            f"{host_by.get(name, {}).get('round_trips')}")
    return failures


def _portability_hint(library: Path) -> str:
    try:
        from ci import portability

        problems = portability.check(library, "linux-x86_64")
    except Exception as exc:  # the loader's message above already names the cause
        return f" (ci/portability.py could not check it: {exc})"
    return "".join(f"\n    portability: {p.what}; fix: {p.fix}" for p in problems)


def report(inside: dict, host: dict) -> str:
    lines = [f"{SUITE} python {inside['python']}; host python {host['python']}"]
    host_by = {r["library"]: r for r in host["libraries"]}
    for r in inside["libraries"]:
        if "load_error" in r:
            lines.append(f"  {r['library']}: LOAD FAILED: {r['load_error']}")
            continue
        info = r["build_info"]
        what = f"abi {r['abi']}, {info.get('variant')} (toolkit {info.get('toolkit')}), commit {info.get('commit')}, " \
               f"build info {'= manifest' if info == r['manifest'] else '!= manifest'}, device_count status " \
               f"{r['device_count_status']} count {r['device_count']}"
        if "round_trips" in r:
            same = r["round_trips"] == host_by.get(r["library"], {}).get("round_trips")
            what += "; round trips " + ", ".join(f"{k} {v[:12]}" for k, v in r["round_trips"].items())
            what += " (= host)" if same else " (!= host)"
        lines.append(f"  {r['library']}: loaded; {what}")
    return "\n".join(lines)


def smoke(target: Path, root: Path, log=print) -> list[str]:
    ensure_root(root, log)
    staged = root / "kbit-smoke"
    names = stage(target, staged / "lib")
    shutil.copy2(PROBE, staged / PROBE.name)
    log(f"[smoke] {target}: {', '.join(n for n in names if n.endswith('.so'))}")
    inside = run_probe(["/usr/bin/python3", f"/kbit-smoke/{PROBE.name}"], "/kbit-smoke/lib", root=root)
    host = run_probe([sys.executable, str(PROBE)], str(staged / "lib"))
    log(report(inside, host))
    return judge(inside, host, staged / "lib")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/smoke_old_glibc.py", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", type=Path, help="a kbit wheel or a folder of libraries")
    parser.add_argument("--root", type=Path, default=None, help="the bullseye root (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        failures = smoke(args.target or newest_wheel(), args.root or default_root())
    except SmokeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in failures:
        print(f"FAIL {f}")
    verdict = f"FAILED, {len(failures)} problem(s)" if failures else "all libraries load and work"
    print(f"smoke-old-glibc: {verdict} on {SUITE}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
