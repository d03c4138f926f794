"""The suite's own shape: every test module under tests/ is collected by a plain `pytest` (README's test command).

pytest skips folders named build/ by default (norecursedirs); tests/build/ holds the build-layer tests, so a plain
run would silently leave a whole layer out. This test fails when any tests/**/test_*.py is not collected."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_every_test_module_is_collected_by_a_plain_run():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = {line.split("::", 1)[0] for line in done.stdout.splitlines() if "::" in line}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    assert on_disk - collected == set(), f"not collected by a plain pytest run: {sorted(on_disk - collected)}"
    assert {p.split("/")[1] for p in collected if p.count("/") == 2} >= {"build", "runtime", "ops"}
