"""The dynamic maps: the generated header is current, and the library's maps equal the published checksums."""
from __future__ import annotations

import ctypes
import hashlib
import struct
from fractions import Fraction

import pytest
import torch

from ci import gen_numerics
from kbit import _native, functional as F

PUBLISHED = {
    True: "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c",
    False: "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398",
}


def test_generated_header_is_not_stale():
    assert gen_numerics.HEADER.read_text() == gen_numerics.render(), "run: python ci/gen_numerics.py"


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


def test_code_map_refuses_an_unknown_map():
    out = (ctypes.c_float * 256)()
    with pytest.raises(_native._errors.NativeArgumentError, match="unknown map 7"):
        _native.cpu().call("kbit_code_map", 7, out)
