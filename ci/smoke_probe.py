"""Loads every kbit library of one folder with ctypes and reports what each does, as JSON on stdout.

This script owns the probe that ci/smoke_old_glibc.py runs twice, inside a Debian bullseye chroot (its own
python3 3.9, no torch, no kbit package) and on the host, so that the two outputs can be compared. Standard
library only, Python >= 3.9. For each manifest kbit_<variant>.build.json in the folder it opens
lib<stem>.so by absolute path and reports: the loader's error if it does not load, kbit_abi_version,
kbit_build_info (parsed), kbit_device_count's status and count, and, for the CPU library, sha256 digests of
8-bit, NF4 and FP4 quantize/dequantize round trips through the C ABI on fixed input. It judges nothing.

CLI:  python3 smoke_probe.py FOLDER
"""
import array
import ctypes
import hashlib
import json
import sys
from pathlib import Path

N = 4096 * 3 + 37  # an odd count with a partial last block
THREADS = 2  # the pthread team of the CPU library, not only its calling thread
F32 = 0
NF4, FP4 = 0, 1


def fixed_input(n):
    """n float32 values in [-3, 3) from a fixed LCG, with one all-zero block; the same on every machine."""
    values, x = array.array("f"), 12345
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        values.append(0.0 if 256 <= i < 512 else (x >> 7) / float(1 << 24) * 6.0 - 3.0)
    return values


def _buffer(kind, n):
    return array.array(kind, bytes(array.array(kind, [0]).itemsize * n))


def _ptr(buf):
    return ctypes.c_void_p(buf.buffer_info()[0])


def _call(lib, name, *args):
    status = getattr(lib, name)(*args)
    if status != 0:
        lib.kbit_last_error.restype = ctypes.c_char_p
        raise RuntimeError(f"{name} returned status {status}: {(lib.kbit_last_error() or b'').decode()}")


def round_trip_8bit(lib, data):
    blocks = (len(data) + 255) // 256
    absmax, codes, out = _buffer("f", blocks), _buffer("B", len(data)), _buffer("f", len(data))
    i64, i32 = ctypes.c_int64(len(data)), ctypes.c_int32
    _call(lib, "kbit_quantize_blockwise_8bit", i32(F32), _ptr(data), _ptr(absmax), _ptr(codes), i64, i32(256),
          None, i32(THREADS))
    _call(lib, "kbit_dequantize_blockwise_8bit", i32(F32), _ptr(codes), _ptr(absmax), _ptr(out), i64, i32(256),
          None, i32(THREADS))
    return hashlib.sha256(absmax.tobytes() + codes.tobytes() + out.tobytes()).hexdigest()


def round_trip_4bit(lib, data, quant_type):
    blocks = (len(data) + 63) // 64
    absmax, packed, out = _buffer("f", blocks), _buffer("B", (len(data) + 1) // 2), _buffer("f", len(data))
    i64, i32 = ctypes.c_int64(len(data)), ctypes.c_int32
    _call(lib, "kbit_quantize_4bit", i32(F32), i32(quant_type), _ptr(data), _ptr(absmax), _ptr(packed), i64,
          i32(64), None, i32(THREADS))
    _call(lib, "kbit_dequantize_4bit", i32(F32), i32(quant_type), _ptr(packed), _ptr(absmax), _ptr(out), i64,
          i32(64), None, i32(THREADS))
    return hashlib.sha256(absmax.tobytes() + packed.tobytes() + out.tobytes()).hexdigest()


def probe(path, manifest):
    result = {"library": path.name, "manifest": manifest}
    try:
        lib = ctypes.CDLL(str(path.resolve()))
    except OSError as exc:
        result["load_error"] = str(exc)
        return result
    lib.kbit_abi_version.restype = ctypes.c_int32
    lib.kbit_build_info.restype = ctypes.c_char_p
    result["abi"] = lib.kbit_abi_version()
    result["build_info"] = json.loads(lib.kbit_build_info().decode())
    count = ctypes.c_int32(-1)
    result["device_count_status"] = lib.kbit_device_count(ctypes.byref(count))
    result["device_count"] = count.value
    lib.kbit_last_error.restype = ctypes.c_char_p
    result["last_error"] = (lib.kbit_last_error() or b"").decode()
    if result["build_info"].get("backend") == "cpu":
        data = fixed_input(N)
        try:
            result["round_trips"] = {"8bit": round_trip_8bit(lib, data), "nf4": round_trip_4bit(lib, data, NF4),
                                     "fp4": round_trip_4bit(lib, data, FP4)}
        except RuntimeError as exc:
            result["round_trip_error"] = str(exc)
    return result


def main(argv):
    folder = Path(argv[1])
    manifests = sorted(folder.glob("kbit_*.build.json"))
    results = [probe(folder / ("lib" + m.name[:-len(".build.json")] + ".so"), json.loads(m.read_text()))
               for m in manifests]
    expected = {"lib" + m.name[:-len(".build.json")] + ".so" for m in manifests}
    orphans = sorted(p.name for p in folder.glob("lib*.so") if p.name not in expected)
    json.dump({"python": sys.version.split()[0], "libraries": results, "without_manifest": orphans},
              sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
