"""The pure parts of the cross-platform smokes (ci/cross_smoke.py, ci/smoke_windows.py); the smokes themselves run
as `nox -s smoke-windows smoke-aarch64` in .ci/run."""
from __future__ import annotations

from pathlib import Path

import pytest

from ci import cross_smoke, smoke_windows


def test_the_info_line_is_left_out_of_the_comparison():
    out = "abi 2\r\ninfo {\"compiler\": \"GNU\"}\r\nq8 codes 1\r\nok\r\n"
    assert cross_smoke.probe_lines(out) == ["abi 2", "q8 codes 1", "ok"]


def test_compare_names_each_differing_line():
    assert cross_smoke.compare("win-amd64", ["abi 2", "q8 1"], ["abi 2", "q8 1"]) == []
    diff = cross_smoke.compare("win-amd64", ["abi 2", "q8 1", "ok"], ["abi 2", "q8 2"])
    assert diff == ["linux-x86_64: 'q8 1'  win-amd64: 'q8 2'", "linux-x86_64: 'ok'  win-amd64: ''"]


def test_wine_sees_the_absolute_path_on_its_z_drive(tmp_path):
    assert smoke_windows.wine_path(tmp_path / "kbit_cpu.dll") == "Z:" + str(tmp_path).replace("/", "\\") + \
        "\\kbit_cpu.dll"


def test_a_missing_tool_is_named_with_the_fix():
    with pytest.raises(cross_smoke.SmokeError, match="no-such-compiler-kbit not found on PATH. fix: apt-get"):
        cross_smoke.require("no-such-compiler-kbit", fix="apt-get install it")


def test_a_failing_command_shows_its_output_and_fix(tmp_path):
    with pytest.raises(cross_smoke.SmokeError) as info:
        cross_smoke.run(["sh", "-c", "echo boom; exit 3"], fix="read it", log=lambda m: None)
    assert "exited with 3" in str(info.value) and "boom" in str(info.value) and "fix: read it" in str(info.value)


def test_the_probe_source_uses_the_headers_prototypes():
    text = Path(cross_smoke.PROBE_SOURCE).read_text()
    assert '#include "kbit.h"' in text and "__typeof__(&kbit_quantize_4bit)" in text


def test_the_c_abi_has_no_llp64_fragile_parameter():
    """`long` is 32 bits on Windows and 64 on Linux (LLP64 vs LP64); size_t and pointers-as-integers are the same
    trap. The smoke proves the bytes agree; this names the culprit if a prototype ever gains one."""
    import re

    header = (cross_smoke.ROOT / "csrc" / "kbit.h").read_text()
    prototypes = re.findall(r"KBIT_API[^;]*;", header, re.S)
    assert len(prototypes) > 10
    for proto in prototypes:
        assert not re.search(r"\b(long|size_t|ssize_t|intptr_t|uintptr_t|wchar_t)\b", proto), proto
