"""The link step of every Linux library: a normal g++ link whose glibc references are pinned to the floor.

This module owns the glibc side of the link (cmake/KbitPortability.cmake makes it the target's
CXX_LINKER_LAUNCHER). It receives CMake's link command and, before running it:
1. reads which versions of each symbol the linked glibc defines (libc, libpthread, libdl, librt, libm, as the
   compiler finds them), and for every symbol whose default version is above matrix.toml's glibc_floor for the
   platform picks the newest version at or below it (pthread_create@GLIBC_2.34 -> pthread_create@GLIBC_2.2.5);
2. copies the link's objects and static archives (libcudart_static.a included) and rewrites their undefined
   references with `objcopy --redefine-syms` to those versioned names;
3. links the copies, and names libpthread.so.0, libdl.so.2 and librt.so.1 explicitly: in glibc >= 2.34 their
   functions live in libc.so.6, but on an older glibc the pinned versions are defined in those files;
4. reads the result and fails the link when it still asks for a GLIBC_ version above the floor.
A reference to a symbol that has no version at or below the floor (arc4random, __libc_single_threaded) stops
the link with the symbol, the input that needs it and the fix. It does not judge DT_NEEDED or libstdc++
versions (ci/portability.py does, after the build).

CLI (as CMake runs it):  python ci/glibc_pin.py --platform linux-x86_64 --work DIR -- g++ ... -o lib.so ...
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import elfdeps  # noqa: E402

GLIBC_LIBRARIES = ("libc.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libm.so.6")
# named in DT_NEEDED so that an old glibc finds the pinned pthread/dl/rt versions where it defines them
SPLIT_LIBRARIES = ("libpthread.so.0", "libdl.so.2", "librt.so.1")
_SYSTEM_L = {"-lpthread": "-l:libpthread.so.0", "-ldl": "-l:libdl.so.2", "-lrt": "-l:librt.so.1"}


class PinError(Exception):
    """The link cannot be made to honour the glibc floor; the message names the symbol and the fix."""


def floor_of(platform: str) -> str:
    from ci import matrix

    plat = matrix.load_platforms().get(platform)
    if plat is None or not plat.glibc_floor:
        raise PinError(f"matrix.toml has no [platforms.{platform}] glibc_floor. fix: add it (e.g. \"2.17\")")
    return plat.glibc_floor


def glibc_versions(compiler: str) -> dict[str, list[tuple[str, bool]]]:
    """symbol -> [(GLIBC_x.y, is_default), ...] over the glibc libraries `compiler` links against."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for name in GLIBC_LIBRARIES:
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.isfile(path):
            continue
        for d in elfdeps.read(Path(path)).definitions:
            if d.version and d.version.startswith("GLIBC_2"):
                found.setdefault(d.symbol, []).append((d.version, d.default))
    if "memcpy" not in found:
        raise PinError(f"{compiler} -print-file-name=libc.so.6 found no glibc to read. fix: a Linux glibc toolchain")
    return found


def pin_table(versions: dict[str, list[tuple[str, bool]]], floor: str) -> tuple[dict[str, str], dict[str, str]]:
    """(symbol -> symbol@VERSION for symbols whose default is above the floor, symbol -> its too-new version for
    symbols that have no version at or below it)."""
    limit = elfdeps.version_key(floor)
    pins, unpinnable = {}, {}
    for symbol, vers in versions.items():
        default = [v for v, is_default in vers if is_default]
        if not default or elfdeps.version_key(default[0]) <= limit:
            continue
        old = [v for v, _ in vers if elfdeps.version_key(v) <= limit]
        if old:
            pins[symbol] = f"{symbol}@{max(old, key=elfdeps.version_key)}"
        else:
            unpinnable[symbol] = default[0]
    return pins, unpinnable


def _nm(nm: str, path: Path, *flags: str) -> set[str]:
    out = subprocess.run([nm, "-P", *flags, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise PinError(f"{nm} could not read {path}: {out.stderr.strip()}")
    return {line.split()[0] for line in out.stdout.splitlines() if line and not line.endswith(":")}


def _expand(args: list[str]) -> list[str]:
    """The link arguments with @response files read in (Ninja uses them for long command lines)."""
    out = []
    for a in args:
        if a.startswith("@") and os.path.isfile(a[1:]):
            out += shlex.split(Path(a[1:]).read_text())
        else:
            out.append(a)
    return out


def _inputs(args: list[str]) -> dict[int, Path]:
    """Index in args -> object or static archive to rewrite (explicit files, and -lNAME found as a .a in a -L dir)."""
    dirs = [a[2:] for a in args if a.startswith("-L") and len(a) > 2]
    found = {}
    for i, a in enumerate(args):
        if a.endswith((".o", ".a")) and os.path.isfile(a) and (i == 0 or args[i - 1] != "-o"):
            found[i] = Path(a)
        elif a.startswith("-l") and not a.startswith("-l:") and a not in _SYSTEM_L:
            for d in dirs:
                shared, static = Path(d, f"lib{a[2:]}.so"), Path(d, f"lib{a[2:]}.a")
                if shared.exists():
                    break
                if static.is_file():
                    found[i] = static
                    break
    return found


def pin_link(args: list[str], *, floor: str, work: Path, nm: str = "nm", objcopy: str = "objcopy",
             log=print) -> list[str]:
    """The link command rewritten to use pinned copies of its inputs; raises PinError for an unpinnable need."""
    args = _expand(args)
    pins, unpinnable = pin_table(glibc_versions(args[0]), floor)
    inputs = _inputs(args)
    table = work / "redefine-syms.txt"
    work.mkdir(parents=True, exist_ok=True)
    table.write_text("".join(f"{s} {v}\n" for s, v in sorted(pins.items())))
    rewritten, pinned = list(args), set()
    for i, path in inputs.items():
        undefined = _nm(nm, path, "-u")
        too_new = sorted(s for s in undefined if s in unpinnable)
        if too_new:
            raise PinError(f"{path} needs {', '.join(f'{s} ({unpinnable[s]})' for s in too_new)}, which no "
                           f"glibc <= {floor} has. fix: do not use it (e.g. no -static-libstdc++, whose "
                           f"__libc_single_threaded/arc4random are glibc 2.32/2.36), or raise glibc_floor in matrix.toml")
        used = undefined & pins.keys()
        if not used:
            continue
        clash = _nm(nm, path, "--defined-only") & used
        if clash:
            raise PinError(f"{path} defines {', '.join(sorted(clash))}, a glibc name this link pins. fix: rename it")
        tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        copy = work / f"{tag}-{path.name}"
        subprocess.run([objcopy, f"--redefine-syms={table}", str(path), str(copy)], check=True)
        rewritten[i] = str(copy)
        pinned |= used
    rewritten = [_SYSTEM_L.get(a, a) for a in rewritten]
    if pinned:
        rewritten += ["-Wl,--push-state,--no-as-needed", *(f"-l:{n}" for n in SPLIT_LIBRARIES), "-Wl,--pop-state"]
    (work / "pinned.txt").write_text("".join(f"{pins[s]}\n" for s in sorted(pinned)))
    log(f"[glibc_pin] floor GLIBC_{floor}: {len(pinned)} symbol(s) pinned in {len(inputs)} input(s) "
        f"(list: {work / 'pinned.txt'})")
    return rewritten


def too_new(library: Path, floor: str) -> list[str]:
    """'symbol@GLIBC_x.y' for every reference of `library` above the floor."""
    limit = elfdeps.version_key(floor)
    return sorted(f"{n.symbol}@{n.version}" for n in elfdeps.read(library).needs
                  if n.version and n.version.startswith("GLIBC_2") and elfdeps.version_key(n.version) > limit)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("usage: glibc_pin.py --platform P --work DIR [--nm NM] [--objcopy OBJCOPY] -- LINK COMMAND",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="ci/glibc_pin.py")
    parser.add_argument("--platform", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--nm", default="nm")
    parser.add_argument("--objcopy", default="objcopy")
    opts, link = parser.parse_args(argv[:split]), argv[split + 1:]
    try:
        floor = floor_of(opts.platform)
        command = pin_link(link, floor=floor, work=opts.work, nm=opts.nm or "nm", objcopy=opts.objcopy or "objcopy")
        done = subprocess.run(command)
        if done.returncode != 0:
            return done.returncode
        output = Path(command[command.index("-o") + 1])
        left = too_new(output, floor)
        if left:
            output.unlink()
            raise PinError(f"{output} still asks for {', '.join(left)} above the floor GLIBC_{floor} (matrix.toml "
                           f"[platforms.{opts.platform}]). fix: report this link line; the pin table missed them")
    except (PinError, elfdeps.ElfError, subprocess.CalledProcessError) as exc:
        print(f"error: [glibc_pin] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
