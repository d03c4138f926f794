"""The nox sessions and the CI job matrix are derived from matrix.toml, and nothing restates its versions."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

from ci import matrix

from conftest import ROOT, require_tool


def nox_sessions() -> dict[str, str]:
    nox = shutil.which("nox") or str(__import__("pathlib").Path(sys.executable).parent / "nox")
    require_tool("nox", shutil.which(nox))
    out = subprocess.run([nox, "-l", "-f", str(ROOT / "noxfile.py")], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    found = {}
    for line in out.splitlines():
        hit = re.match(r"^[*-] (\S+) -> (.*)$", line.strip())
        if hit:
            found[hit.group(1)] = hit.group(2)
    return found


def test_one_build_session_per_variant_each_with_a_docstring():
    sessions = nox_sessions()
    variants = matrix.load()
    for v in variants.values():
        doc = sessions[f"build-{v.name}"]
        assert f"kbit_{v.name}" in doc
        if v.backend == "cuda":
            assert f"CUDA {v.toolkit}" in doc and f"PTX {v.ptx}" in doc
        if v.toolkit_source:
            assert f"toolkit-{v.name}" in sessions
    assert "tests" in sessions and "check" in sessions and "bench" in sessions and "lint" in sessions
    assert all(doc.strip() for doc in sessions.values())


def test_workflows_take_versions_and_archs_from_the_matrix():
    """CUDA versions and arch lists are written in matrix.toml only; workflows ask ci/matrix.py."""
    workflows = list((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    for wf in workflows:
        text = wf.read_text()
        assert not re.search(r"cuda1\d\d\b|(?<![\d.])1[1-3]\.\d(?![\d.])|sm_\d+|\b\d{2}-real\b", text), wf.name
    assert "nox -s ci-matrix" in "".join(w.read_text() for w in workflows)


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "nox -s tests" in readme and "nox -s tests" in ci_run
    assert "nox -s lint" in readme and ci_run.index("nox -s lint") < ci_run.index("nox -s tests")
