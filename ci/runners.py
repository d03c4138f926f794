"""ci/runners.toml and the CI job matrix derived from it and matrix.toml (`nox -s ci-matrix`).

This module owns the release pipeline's runner and toolkit-install rules: reading and validating ci/runners.toml
(against matrix.toml: every platform has a runner and an install rule, every rule a name for every component), and
deriving from both the job matrix the workflows consume. It owns no CUDA version, arch or platform list (matrix.toml
does) and runs nothing. The workflows take the JSON this prints as it is: `fromJSON` of the ci-matrix job's output.

CLI:  python ci/runners.py gha-matrix       the whole job matrix as one JSON line (what `nox -s ci-matrix` prints)
      python ci/runners.py check            validate ci/runners.toml against matrix.toml
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `ci` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ci import cuda_catalog, matrix  # noqa: E402

RUNNERS_PATH = Path(__file__).resolve().parent / "runners.toml"
SCHEMA = 1
INSTALL_RULES = ("rhel8", "redistrib")


class RunnersError(Exception):
    """ci/runners.toml is invalid or does not cover matrix.toml; the message lists every problem and its fix."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Runners:
    """The validated ci/runners.toml."""

    platforms: dict[str, dict]
    install: dict[str, dict]
    components: dict[str, tuple[str, ...]]

    def components_of(self, toolkit: str) -> tuple[str, ...]:
        """The CUDA components a build with `toolkit` installs: every build's, plus those its major adds."""
        return self.components["all"] + self.components.get(toolkit.split(".")[0], ())

    def packages(self, rule: str, toolkit: str) -> list[str]:
        """The package (rpm) or archive (redistrib) names of `toolkit`'s components under one install rule."""
        dashed = toolkit.replace(".", "-")
        return [self.install[rule]["packages"][c].format(dashed=dashed) for c in self.components_of(toolkit)]


def _problems(doc: dict, variants: dict[str, matrix.Variant]) -> list[str]:
    problems = [] if doc.get("schema") == SCHEMA else [f"schema is {doc.get('schema')!r}; set schema = {SCHEMA}"]
    plats, install = doc.get("platforms", {}), doc.get("install", {})
    for name in matrix.PLATFORMS:
        row = plats.get(name)
        if not isinstance(row, dict) or not row.get("runner"):
            problems.append(f"[platforms.{name}] has no runner; add runner = \"<GitHub runner label>\"")
            continue
        if row.get("install") not in INSTALL_RULES or row.get("install") not in install:
            problems.append(f"[platforms.{name}] install is {row.get('install')!r}; use one of {list(INSTALL_RULES)} "
                            f"with its [install.<rule>] table")
        if name.startswith("linux") and not row.get("container"):
            problems.append(f"[platforms.{name}] has no container; Linux builds run in a manylinux image")
    problems += [f"[platforms.{n}] is not a matrix.toml platform; use one of {list(matrix.PLATFORMS)}"
                 for n in plats if n not in matrix.PLATFORMS]
    comps = doc.get("components", {})
    if not isinstance(comps.get("all"), list) or not comps["all"]:
        problems.append("[components] has no `all` list; list the CUDA components every build installs")
    for rule, table in install.items():
        if not isinstance(table, dict) or not table.get("source") or not isinstance(table.get("packages"), dict):
            problems.append(f"[install.{rule}] needs source and packages")
            continue
        named = {c for group in comps.values() if isinstance(group, list) for c in group}
        problems += [f"[install.{rule}] packages has no name for component {c!r}; add {c} = \"...\""
                     for c in sorted(named - table["packages"].keys())]
    return problems


def load(path: Path = RUNNERS_PATH, variants: dict[str, matrix.Variant] | None = None) -> Runners:
    """Read ci/runners.toml and check it covers matrix.toml (every platform, every CUDA toolkit)."""
    variants = matrix.load() if variants is None else variants
    doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    problems = _problems(doc, variants)
    if problems:
        raise RunnersError(Path(path), problems)
    comps = {k: tuple(v) for k, v in doc["components"].items()}
    return Runners(doc["platforms"], doc["install"], comps)


def _host(runners: Runners, v: matrix.Variant, plat: str) -> dict[str, str]:
    """Linux: the package and path of the row's host compiler ("g++-12" -> gcc-toolset-12); Windows: the MSVC
    toolset, when the row's nvcc refuses the runner's newest."""
    rule = runners.install[runners.platforms[plat]["install"]]
    if "host_package" not in rule:
        pin = rule.get("msvc_toolset", {})
        toolset = pin.get("toolset", "") if v.toolkit and pin and \
            cuda_catalog.version_tuple(v.toolkit) < cuda_catalog.version_tuple(pin["below"]) else ""
        return {"host_package": "", "host_cxx": "", "msvc_toolset": toolset}
    major = v.host_compiler.rsplit("-", 1)[-1]
    return {"host_package": rule["host_package"].format(major=major), "host_cxx": rule["host_cxx"].format(major=major),
            "msvc_toolset": ""}


def _cuda(runners: Runners, v: matrix.Variant, plat: str) -> dict[str, str]:
    """Where the job's toolkit comes from and which packages it installs ('' for the CPU row)."""
    if v.backend != "cuda":
        return {"toolkit": "", "toolkit_release": "", "cuda_source": "", "cuda_packages": ""}
    name = runners.platforms[plat]["install"]
    rule, release = runners.install[name], v.release
    source = rule["source"].format(release=release, repo_arch=rule.get("repo_arch", {}).get(plat, ""))
    return {"toolkit": v.toolkit, "toolkit_release": release, "cuda_source": source,
            "cuda_packages": " ".join(runners.packages(name, v.toolkit))}


def build_job(runners: Runners, v: matrix.Variant, plat: str) -> dict[str, str]:
    """One build job: a (platform, variant) pair with its runner, container, toolkit and host compiler."""
    where = runners.platforms[plat]
    return {"variant": v.name, "platform": plat, "runner": where["runner"], "container": where.get("container", ""),
            **_cuda(runners, v, plat), **_host(runners, v, plat),
            "cache_key": f"{plat}-{v.name}-{v.release or 'cpu'}"}


def os_of(plat: str) -> str:
    """"linux" or "windows": the workflows have one build and one assemble job definition per OS."""
    return "windows" if plat.startswith("win") else "linux"


def gha_matrix(variants: dict[str, matrix.Variant], runners: Runners) -> dict[str, dict[str, list[dict[str, str]]]]:
    """The job matrix, one `include` list per job definition of .github/workflows/release.yml: build_linux and
    build_windows (one job per platform and variant), assemble_linux and assemble_windows (one per platform, with the
    variants whose artifacts it assembles) and test (one per platform)."""
    out: dict[str, dict[str, list[dict[str, str]]]] = {}
    for os_name in ("linux", "windows"):
        plats = [p for p in matrix.PLATFORMS if os_of(p) == os_name]
        out[f"build_{os_name}"] = {"include": [build_job(runners, v, p) for p in plats for v in variants.values()
                                               if p in v.platforms]}
        out[f"assemble_{os_name}"] = {"include": [platform_job(runners, variants, p) for p in plats]}
    out["test"] = {"include": [platform_job(runners, variants, p) for p in matrix.PLATFORMS]}
    return out


def platform_job(runners: Runners, variants: dict[str, matrix.Variant], plat: str) -> dict[str, str]:
    """One assemble or test job: the platform, its runner and container, and the variants its wheel holds."""
    where = runners.platforms[plat]
    return {"platform": plat, "runner": where["runner"], "container": where.get("container", ""),
            "variants": " ".join(v.name for v in variants.values() if plat in v.platforms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/runners.py", description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=("gha-matrix", "check"))
    parser.add_argument("--matrix", type=Path, default=matrix.MATRIX_PATH)
    parser.add_argument("--runners", type=Path, default=RUNNERS_PATH)
    args = parser.parse_args(argv)
    try:
        variants = matrix.load(args.matrix)
        runners = load(args.runners, variants)
    except (matrix.MatrixError, RunnersError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "check":
        print(f"{args.runners}: covers {len(variants)} variants on {len(runners.platforms)} platforms")
    else:
        print(json.dumps(gha_matrix(variants, runners), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
