"""The code tables: the generated headers are current, the library's dynamic maps equal the published checksums,
and its NF4/FP4 tables and thresholds equal the published definitions."""
from __future__ import annotations

import ctypes
import hashlib
import math
import struct
from fractions import Fraction

import pytest
import torch

from ci import gen_numerics
from kbit import _abi, _native
from kbit import functional as F

PUBLISHED = {
    True: "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c",
    False: "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398",
}


def test_generated_header_is_not_stale():
    assert gen_numerics.HEADER.read_text() == gen_numerics.render(), "run: python ci/gen_numerics.py"
    assert gen_numerics.HEADER_4BIT.read_text() == gen_numerics.render_4bit(), "run: python ci/gen_numerics.py"


def test_the_check_mode_fails_on_a_stale_header(monkeypatch, tmp_path, capsys):
    stale = tmp_path / "quant4_tables.h"
    stale.write_text(gen_numerics.render_4bit().replace("0x1.b913b2p-1f", "0x1.b913b4p-1f"))
    monkeypatch.setattr(gen_numerics, "OUTPUTS", ((gen_numerics.HEADER, gen_numerics.render),
                                                  (stale, gen_numerics.render_4bit)))
    assert gen_numerics.main(["--check"]) == 1 and "STALE" in capsys.readouterr().out


def test_library_4bit_tables_are_the_published_ones():
    """kbit_code_map's NF4/FP4 tables (what the kernels decode with) bit for bit, FP4's code 8 as -0.0."""
    for map_id, expected in ((_abi.MAP_NF4, gen_numerics.nf4_values()), (_abi.MAP_FP4, gen_numerics.fp4_values())):
        out = (ctypes.c_float * _abi.MAP_SIZE_4BIT)()
        _native.cpu().call("kbit_code_map", map_id, out, _abi.MAP_SIZE_4BIT)
        assert [struct.pack("<f", v) for v in out] == [struct.pack("<f", v) for v in expected]
    assert gen_numerics.nf4_values()[0] == -1.0 and gen_numerics.fp4_values()[8] == 0.0
    assert math.copysign(1.0, gen_numerics.fp4_values()[8]) == -1.0


def test_4bit_thresholds_decide_exactly_at_the_midpoints():
    """Each threshold t: t <= the exact midpoint < the next float32 after t, so `x > t` is `x > midpoint`."""
    def next_up(x):
        return struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", x))[0] + (1 if x >= 0 else -1)))[0]
    ranked = sorted(gen_numerics.fp4_values()[:8])
    for values, thresholds in ((gen_numerics.nf4_values(), gen_numerics.nf4_thresholds()),
                               (ranked, gen_numerics.fp4_magnitude_thresholds())):
        assert len(thresholds) == len(values) - 1
        for a, b, t in zip(values, values[1:], thresholds):
            mid = (Fraction(a) + Fraction(b)) / 2
            assert Fraction(t) <= mid < Fraction(next_up(t))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_library_maps_equal_the_published_checksums(signed):
    values = F.create_dynamic_map(signed)
    digest = hashlib.sha256(values.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == PUBLISHED[signed]
    assert values.tolist() == gen_numerics.dynamic_map(signed)  # and equal the definition recomputed here


def test_signed_map_shape_facts():
    m = F.create_dynamic_map(True)
    assert m.numel() == 256 and torch.all(m[1:] > m[:-1])
    assert m[127].item() == 0.0 and m[0].item() == pytest.approx(-0.99296875) and m[255].item() == 1.0
    positive = m[m > 0]
    per_decade = [int(((positive >= 10.0 ** (k - 1)) & (positive < 10.0 ** k)).sum()) for k in range(-6, 1)]
    assert per_decade[-1] + 1 == 65 and per_decade[:-1] == [1, 2, 4, 8, 16, 32]


def test_unsigned_map_starts_at_zero():
    m = F.create_dynamic_map(False)
    assert m[0].item() == 0.0 and m[255].item() == 1.0 and torch.all(m[1:] > m[:-1])


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_midpoint_pairs_are_exact(signed):
    values = gen_numerics.dynamic_map(signed)
    his, los = gen_numerics.split_midpoints(values)
    for a, b, hi, lo in zip(values, values[1:], his, los):
        assert Fraction(hi) + Fraction(lo) == (Fraction(a) + Fraction(b)) / 2
        assert struct.unpack("<f", struct.pack("<f", hi))[0] == hi and struct.unpack("<f", struct.pack("<f", lo))[0] == lo


def test_code_map_refuses_an_unknown_map_and_a_short_buffer():
    out = (ctypes.c_float * 256)()
    with pytest.raises(_native._errors.NativeArgumentError, match="unknown map 7"):
        _native.cpu().call("kbit_code_map", 7, out, 256)
    with pytest.raises(_native._errors.NativeArgumentError, match="capacity = 16, but map 0 has 256 values"):
        _native.cpu().call("kbit_code_map", _abi.MAP_DYNAMIC_SIGNED, out, 16)
