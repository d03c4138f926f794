"""A malformed BNB_CUDA_VERSION is named once, at the first native call, even when only CPU tensors are used;
the first CUDA call still raises BadOverrideError."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import warnings, torch, kbit
from kbit import _native, functional as F
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    for _ in range(3):
        F.quantize_blockwise(torch.ones(128), blocksize=64)
    F.quantize_4bit(torch.ones(128), blocksize=64)
kbit_warnings = [w for w in seen if issubclass(w.category, kbit.KbitWarning)]
print(len(kbit_warnings))
print(kbit_warnings[0].message if kbit_warnings else "")
print(kbit_warnings[0].filename if kbit_warnings else "")
print(", ".join(sorted(_native.bundled_manifests())))
try:
    from kbit import _runtime
    _runtime.cuda_library(0, "A")
except kbit.KbitError as e:
    print(type(e).__name__)
"""


def _probe(value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "BNB_CUDA_VERSION"}
    if value is not None:
        env["BNB_CUDA_VERSION"] = value
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("value", ["abc", "12.x", "cuda124"])
def test_a_malformed_override_warns_once_naming_variable_value_and_bundled_variants(value):
    count, message, filename, bundled, error = _probe(value)
    assert count == "1"
    assert f"BNB_CUDA_VERSION={value!r}" in message and f"This installation bundles: {bundled}" in message
    assert filename == "<string>"  # points at the user's call, not at kbit's internals
    assert error == "BadOverrideError"


@pytest.mark.parametrize("value", [None, "cpu", "12.4"])
def test_a_valid_or_absent_override_gives_no_warning_for_cpu_work(value):
    assert _probe(value)[0] == "0"
