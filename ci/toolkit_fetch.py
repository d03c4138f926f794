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
Python 3.11 standard library only. The jobs live in ci/toolkits/ (see its __init__ for the module map);
this module only orchestrates them and is the CLI.
"""


from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

MATRIX_PATH = pathlib.Path(__file__).resolve().parent.parent / "matrix.toml"
if __package__ in (None, ""):  # run as a script: make `ci` importable
    sys.path.insert(0, str(MATRIX_PATH.parent))

from ci.toolkits.apt import parse_package_spec, private_apt  # noqa: E402
from ci.toolkits.debian_home import assemble_debian_home, deb_members, extract_deb, implied_runtime_packages  # noqa: E402
from ci.toolkits.errors import Log, ToolkitFetchError, ToolkitUnavailable, timed  # noqa: E402
from ci.toolkits.host_compiler import default_host_compiler, resolve_host_compiler  # noqa: E402
from ci.toolkits.pypi_home import (  # noqa: E402
    find_wheel_cuda_home,
    link_wheel_cuda_home,
    merge_headers,
    pip_install,
    wheel_include_dirs,
)
from ci.toolkits.tree import (  # noqa: E402
    REQUIRED_FILES,
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
from ci.toolkits.verify import verify_toolkit  # noqa: E402

# ------------------------------------------------------------------------------------------ provisioning


def _build_debian_tree(work: pathlib.Path, dest: pathlib.Path, debian: dict, log: Log) -> None:
    """Download (cached) and extract the Debian packages of `debian` into a CUDA_HOME at `work`."""
    suite, specs = debian.get("suite"), list(debian.get("packages") or [])
    if not suite or not specs:
        raise ToolkitFetchError("read toolkit_source", f"debian table {debian!r} needs 'suite' and 'packages'",
                                "fix the variant's toolkit_source in matrix.toml")
    apt = private_apt(dest, suite, log)
    with locked(apt.root / ".lock"):
        apt.ensure_lists()
        extra = implied_runtime_packages(specs, apt.show)
        if extra:
            log(f"[toolkit_fetch] adding {', '.join(extra)} (nvidia-cuda-dev's libcudart.so link points into it)")
        specs = specs + extra
        names = [parse_package_spec(s)[0] for s in specs]
        members = {n: deb_members(n) for n in names}
        debs = apt.download(specs, downloads_dir(dest) / "debs")
    staging = work / ".staging"
    roots = [staging / n for n in names]
    with timed(log, f"extract {', '.join(d.name for d in debs.values())}"):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(extract_deb, debs[n], staging / n, members[n]) for n in names]
            for job in jobs:
                job.result()
    assemble_debian_home(roots, work, log)
    shutil.rmtree(staging)


def _build_pypi(work: pathlib.Path, dest: pathlib.Path, requirements: Sequence[str], has_debian: bool,
                log: Log) -> str:
    """Install the wheels; return the CUDA_HOME relative to `work` ('.' when merged into a Debian tree)."""
    cache = downloads_dir(dest) / "pypi"
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
    with locked(dest.parent / f".{dest.name}.lock"):
        reused = complete_tree(dest, digest)
        if reused is not None:
            log(f"[toolkit_fetch] {variant}: reusing {reused} (marker matches)")
            return reused
        check_dest_replaceable(dest)
        log(f"[toolkit_fetch] {variant}: provisioning CUDA {toolkit} into {dest}")
        start = time.monotonic()
        compiler = resolve_host_compiler(host_compiler or default_host_compiler(toolkit), dest.parent, log)
        work = prepare_workdir(dest)
        home_rel = "."
        if source.get("debian"):
            _build_debian_tree(work, dest, source["debian"], log)
        if source.get("pypi"):
            home_rel = _build_pypi(work, dest, list(source["pypi"]), bool(source.get("debian")), log)
        files = [os.path.normpath(os.path.join(home_rel, f)) for f in REQUIRED_FILES]
        info = {"variant": variant, "toolkit": toolkit, "source": source, "host_compiler": compiler}
        write_marker(work, digest=digest, home_rel=home_rel, files=files, verified=False, **info)
        install_workdir(work, dest)
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
