"""Host compilers for nvcc: the default per toolkit, finding one, and fetching a relocatable GCC (e.g. g++-11) from
Debian the private way, proved by a hello world that compiles, links and runs. Linux/Debian only."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile

from ci.toolkits.apt import dpkg_installed_version, dpkg_satisfies, private_apt, resolve_missing
from ci.toolkits.debian_home import extract_deb
from ci.toolkits.errors import Log, ToolkitFetchError, run, timed
from ci.toolkits.tree import (
    check_dest_replaceable,
    complete_tree,
    downloads_dir,
    install_workdir,
    locked,
    prepare_workdir,
    source_hash,
    tree_size,
    write_marker,
)

# Host compilers this module can fetch from Debian when they are not installed (name -> Debian suite).
PROVISIONABLE_HOST_COMPILERS = {"g++-11": "bookworm", "gcc-11": "bookworm"}


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
    with locked(dest.parent / f".{dest.name}.lock"):
        if complete_tree(dest, digest) is not None:
            log(f"[toolkit_fetch] {name}: reusing {dest}")
            return dest / exe_rel
        check_dest_replaceable(dest)
        apt = private_apt(dest, suite, log)
        with locked(apt.root / ".lock"):
            apt.ensure_lists()
            packages = resolve_missing([f"g++-{major}" if m.group(1) == "g++" else f"gcc-{major}"],
                                       show=apt.show, installed=dpkg_installed_version, satisfies=dpkg_satisfies)
            log(f"[toolkit_fetch] {name}: packages the system lacks: "
                + ", ".join(f"{n}={v}" for n, v in sorted(packages.items())))
            debs = apt.download([f"{n}={v}" for n, v in sorted(packages.items())], downloads_dir(dest) / "debs")
        work = prepare_workdir(dest)
        with timed(log, f"extract {len(debs)} packages of {name}"):
            for deb in debs.values():
                extract_deb(deb, work, ("./usr",), excludes=("./usr/share",))
        for line in fix_dangling_links(work):
            log(f"[toolkit_fetch] relinked {line}")
        if not (work / exe_rel).exists():
            raise ToolkitFetchError("provision host compiler", f"{work / exe_rel} missing after extraction",
                                    f"apt-get install {name}")
        packages_text = {n: v for n, v in sorted(packages.items())}
        write_marker(work, digest=digest, home_rel=".", files=[exe_rel], verified=False, packages=packages_text)
        install_workdir(work, dest)
        check_host_compiler(dest / exe_rel, major)
        write_marker(dest, digest=digest, home_rel=".", files=[exe_rel], verified=True, packages=packages_text)
        log(f"[toolkit_fetch] {name}: {dest / exe_rel} compiles and links C++ ({tree_size(dest) / 1e6:.0f} MB)")
        return dest / exe_rel


