"""A Windows CUDA toolkit from NVIDIA's redistributable archives, for the release pipeline's Windows build jobs.

This module owns one job: read NVIDIA's `redistrib_<release>.json` manifest (the release comes from the matrix.toml
row, the URL from ci/runners.toml), pick the archives of the components ci/runners.toml names
(cuda_nvcc, cuda_cudart, cuda_cccl; on 13.x also cuda_crt and libnvvm), download each, refuse any whose sha256 is
not the manifest's, and merge them into one CUDA_PATH. No Visual Studio integration is installed: the build uses
Ninja, which needs none. It is platform-neutral (standard library only, no fcntl), so its tests run here.

CLI: python ci/redistrib.py VARIANT --dest DIR   prints progress on stderr and the CUDA_PATH as the last stdout line.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script: make `ci` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ci import matrix, runners  # noqa: E402
from ci.toolkits import tree  # noqa: E402

PLATFORM_KEY = "windows-x86_64"  # the manifest's name for win-amd64
Fetch = Callable[[str], bytes]


class RedistribError(Exception):
    """The manifest or an archive is not what it must be; the message names the URL, what was found and the fix."""


@dataclass(frozen=True)
class Archive:
    """One component's archive as the manifest lists it."""

    component: str
    version: str
    relative_path: str
    sha256: str


def fetch_url(url: str) -> bytes:
    """Download `url` (https only: the manifest is the trust root for every archive's sha256)."""
    if not url.startswith("https://"):
        raise RedistribError(f"refusing to fetch {url}: only https:// URLs. fix: correct ci/runners.toml")
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 (scheme checked above)
        return response.read()


def pick(manifest: dict, components: list[str], url: str, platform_key: str = PLATFORM_KEY) -> list[Archive]:
    """The archive of each component for `platform_key`, or RedistribError naming every missing one."""
    found, missing = [], []
    for name in components:
        entry = manifest.get(name, {}).get(platform_key) if isinstance(manifest.get(name), dict) else None
        if not isinstance(entry, dict) or not entry.get("relative_path") or not entry.get("sha256"):
            missing.append(name)
            continue
        found.append(Archive(name, str(manifest[name].get("version", "?")), entry["relative_path"], entry["sha256"]))
    if missing:
        have = sorted(k for k, v in manifest.items() if isinstance(v, dict) and platform_key in v)
        raise RedistribError(f"{url} has no {platform_key} archive for {', '.join(missing)} (it has: {', '.join(have)}). "
                             f"fix: correct the component names in ci/runners.toml [install.redistrib]")
    return found


def verified(archive: Archive, data: bytes, url: str) -> bytes:
    """The archive's bytes, if their sha256 is the manifest's."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != archive.sha256.lower():
        raise RedistribError(f"{url}: sha256 {digest}, but the manifest says {archive.sha256}; nothing was installed. "
                             f"fix: retry (a truncated or altered download), and if it persists report it to NVIDIA")
    return data


def extract(data: bytes, home: Path) -> int:
    """Merge a redistrib zip (one top folder `<component>-<platform>-<version>-archive/`) into `home`; file count."""
    count = 0
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) < 2 or any(p in ("..", "") for p in parts) or parts[1] == "LICENSE":
                continue
            target = home.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            count += 1
    return count


def install(variant: str, dest: Path, *, fetch: Fetch = fetch_url, log=print,
            matrix_path: Path = matrix.MATRIX_PATH, runners_path: Path = runners.RUNNERS_PATH) -> Path:
    """Make `dest` a CUDA_PATH for the variant's toolkit from NVIDIA's redistributables; return it. Idempotent:
    a tree whose marker matches (release, archives) is reused without downloading."""
    variants = matrix.load(matrix_path)
    if variant not in variants or variants[variant].backend != "cuda":
        raise RedistribError(f"{variant!r} is not a CUDA row of {matrix_path}. fix: use one of "
                             f"{', '.join(v.name for v in variants.values() if v.backend == 'cuda')}")
    table, toolkit = runners.load(runners_path, variants), variants[variant].toolkit
    release = variants[variant].release
    url = table.install["redistrib"]["source"].format(release=release)
    manifest = json.loads(fetch(url))
    archives = pick(manifest, table.packages("redistrib", toolkit), url)
    digest = tree.source_hash(toolkit, {"redistrib": release, "archives": [a.sha256 for a in archives]})
    dest = dest.absolute()
    if tree.complete_tree(dest, digest) is not None:
        log(f"[redistrib] reusing {dest} (marker matches CUDA {release})")
        return dest
    tree.check_dest_replaceable(dest)
    work = tree.prepare_workdir(dest)
    base = url.rsplit("/", 1)[0]
    for a in archives:
        archive_url = f"{base}/{a.relative_path}"
        files = extract(verified(a, fetch(archive_url), archive_url), work)
        log(f"[redistrib] {a.component} {a.version}: sha256 ok, {files} files")
    nvcc = "bin/nvcc.exe"
    if not (work / nvcc).is_file():
        raise RedistribError(f"no {nvcc} after extracting {', '.join(a.component for a in archives)} from {url}. "
                             f"fix: check the cuda_nvcc component in ci/runners.toml")
    tree.write_marker(work, digest=digest, home_rel=".", files=[nvcc], verified=True, release=release)
    tree.install_workdir(work, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/redistrib.py", description=__doc__.splitlines()[0])
    parser.add_argument("variant", help="a CUDA row of matrix.toml, e.g. cuda130")
    parser.add_argument("--dest", type=Path, required=True, help="the folder to make a CUDA_PATH")
    args = parser.parse_args(argv)
    try:
        home = install(args.variant, args.dest, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (RedistribError, matrix.MatrixError, runners.RunnersError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
