"""`python -m kbit [--json] [--no-self-test]`: what kbit sees on this machine, what it chose and why, whether
it loads and computes correctly, and a diagnosis with a fix for every problem found.

Exit codes (one per failure class; 0 means kbit is usable here; the most likely problem decides):
   0 usable                        7 driver too old               11 ABI mismatch
   1 other kbit error              8 no usable NVIDIA driver      12 self-test failed
   3 bad BNB_CUDA_VERSION          9 glibc too old                13 no CUDA backend (other)
   4 variant not bundled          10 library does not load        14 stale import after an upgrade
   5 no variant for torch's CUDA   6 GPU arch not covered
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kbit", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[3:]))
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-self-test", action="store_true", help="skip the quantize/dequantize round trips")
    args = parser.parse_args(argv)
    from kbit import _diagnose, _render, _report

    report = _report.build(self_test=not args.no_self_test)
    _render.emit(_render.as_json(report) if args.json else _render.text(report))
    return _diagnose.exit_code(report.findings)


if __name__ == "__main__":
    sys.exit(main())
