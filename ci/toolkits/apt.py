"""Debian packages through a private apt configuration: reading the system's sources (never writing them), the
private sources/lists/cache, control records and Depends resolution against the dpkg database (read-only), and
`apt-get download`. Linux/Debian only; nothing here installs anything."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ci.toolkits.errors import Log, ToolkitFetchError, fmt_cmd, run, timed
from ci.toolkits.tree import downloads_dir

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBIAN_COMPONENTS = ("main", "contrib", "non-free")
SYSTEM_SOURCES_LIST = pathlib.Path("/etc/apt/sources.list")
SYSTEM_SOURCES_DIR = pathlib.Path("/etc/apt/sources.list.d")


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
        with timed(self.log, f"apt-get update ({self.suite}, private lists in {self.root})"):
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
                                        f"run apt-cache {fmt_cmd(self.options())} policy {name} to see what the "
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
            with timed(self.log, f"apt-get download {' '.join(specs)}"):
                run(["apt-get", *self.options(), "download", *specs], cwd=tmp, step="apt-get download",
                    fix=f"check the versions against `apt-cache {fmt_cmd(self.options())} policy NAME` "
                        f"(suite {self.suite}) and fix matrix.toml")
            for deb in tmp.glob("*.deb"):
                deb.replace(cache / deb.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def private_apt(dest: pathlib.Path, suite: str, log: Log) -> PrivateApt:
    """The private apt state for `suite` in the download cache."""
    return PrivateApt(downloads_dir(dest) / "apt" / suite, suite, log)


