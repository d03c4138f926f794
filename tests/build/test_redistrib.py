"""ci/redistrib.py offline: NVIDIA's redistrib manifest and archives replaced by fakes served from memory."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from ci import matrix, redistrib, runners
from ci.toolkits import tree

BASE = "https://developer.download.nvidia.com/compute/cuda/redist"


def _zip(component: str, files: dict[str, bytes]) -> bytes:
    """A fake archive, byte-identical on every call: each entry's timestamp is fixed (zipfile would stamp the clock's
    time, so two servers made in different 2-second steps published different sha256s, and a reuse test failed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        top = f"{component}-windows-x86_64-13.0.88-archive"
        for name, data in {"LICENSE": b"license", **files}.items():
            z.writestr(zipfile.ZipInfo(f"{top}/{name}", date_time=(2025, 10, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _server(release: str, *, corrupt: str = "", drop: str = ""):
    table = runners.load()
    archives = {c: _zip(c, {f"bin/{c}.txt": c.encode()} | ({"bin/nvcc.exe": b"MZ"} if c == "cuda_nvcc" else {}))
                for c in table.packages("redistrib", "13.0")}
    manifest = {"release_date": "2025-10-01"}
    urls = {}
    for c, data in archives.items():
        if c == drop:
            continue
        rel = f"{c}/windows-x86_64/{c}-13.0.88-archive.zip"
        manifest[c] = {"version": "13.0.88", "windows-x86_64": {"relative_path": rel,
                                                                 "sha256": hashlib.sha256(data).hexdigest()}}
        urls[f"{BASE}/{rel}"] = data + (b"x" if c == corrupt else b"")
    urls[f"{BASE}/redistrib_{release}.json"] = json.dumps(manifest).encode()
    fetched = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return urls[url]
    return fetch, fetched


def test_installs_the_row_components_with_sha256_checked(tmp_path):
    release = matrix.load()["cuda130"].release
    fetch, fetched = _server(release)
    stamps = {i.date_time for i in zipfile.ZipFile(io.BytesIO(_zip("cuda_nvcc", {"bin/nvcc.exe": b"MZ"}))).infolist()}
    assert stamps == {(2025, 10, 1, 0, 0, 0)}  # the fakes do not depend on the clock
    home = redistrib.install("cuda130", tmp_path / "cuda", fetch=fetch, log=lambda m: None)
    assert (home / "bin" / "nvcc.exe").read_bytes() == b"MZ"
    assert sorted(p.name for p in (home / "bin").glob("*.txt")) == \
        ["cuda_cccl.txt", "cuda_crt.txt", "cuda_cudart.txt", "cuda_nvcc.txt", "libnvvm.txt"]
    assert not (home / "LICENSE").exists() and fetched[0].endswith(f"redistrib_{release}.json")
    assert tree.read_marker(home)["release"] == release
    again, fetched2 = _server(release)
    assert redistrib.install("cuda130", home, fetch=again, log=lambda m: None) == home
    assert len(fetched2) == 1  # only the manifest: the matching tree is reused


def test_a_wrong_sha256_installs_nothing(tmp_path):
    fetch, _ = _server(matrix.load()["cuda130"].release, corrupt="cuda_cudart")
    with pytest.raises(redistrib.RedistribError, match="sha256 .* but the manifest says"):
        redistrib.install("cuda130", tmp_path / "cuda", fetch=fetch, log=lambda m: None)
    assert not (tmp_path / "cuda").exists()


def test_a_component_missing_from_the_manifest_is_named(tmp_path):
    fetch, _ = _server(matrix.load()["cuda130"].release, drop="libnvvm")
    with pytest.raises(redistrib.RedistribError, match="no windows-x86_64 archive for libnvvm"):
        redistrib.install("cuda130", tmp_path / "cuda", fetch=fetch, log=lambda m: None)


def test_cuda12_needs_no_crt_or_nvvm_archive():
    assert runners.load().packages("redistrib", "12.4") == ["cuda_nvcc", "cuda_cudart", "cuda_cccl"]


def test_only_https_is_fetched():
    with pytest.raises(redistrib.RedistribError, match="only https"):
        redistrib.fetch_url("http://example.invalid/x.json")
