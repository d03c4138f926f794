"""The C ABI of csrc/kbit.h as Python sees it: the ABI version, every exported function's ctypes prototype,
and which typed error each failure status becomes.

This module owns only declarations (tests/test_abi.py checks them against csrc/kbit.h and the libraries'
exported symbols). Loading libraries is kbit._native's job; which library serves a tensor is kbit._dispatch's.
When a function is added to csrc/kbit.h, its prototype is added here.
"""
from __future__ import annotations

import ctypes

from kbit import _errors

ABI_VERSION = 1  # must equal KBIT_ABI_VERSION in csrc/kbit.h (tests/test_abi.py checks)

_c_int, _i32, _i64, _vp = ctypes.c_int, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
_f32 = ctypes.c_float
_f32p, _u8p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint8)
PROTOTYPES: dict[str, tuple[type, tuple]] = {
    "kbit_abi_version": (_i32, ()),
    "kbit_build_info": (ctypes.c_char_p, ()),
    "kbit_last_error": (ctypes.c_char_p, ()),
    "kbit_device_count": (_c_int, (ctypes.POINTER(_i32),)),
    "kbit_code_map": (_c_int, (_i32, _f32p)),
    "kbit_quantize_blockwise_8bit": (_c_int, (_i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_dequantize_blockwise_8bit": (_c_int, (_i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_quantize_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_dequantize_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_gemv_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _vp, _i64, _i64, _i64, _i32, _vp, _i32)),
    # optimizer, dtype, p, g, state1, state2, n, lr, beta1, beta2, beta3, alpha, eps, weight_decay,
    # correction1, correction2, gnorm_scale, step, stream, num_threads
    "kbit_optimizer_update_32bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _i64) + (_f32,) * 10 + (_i32, _vp, _i32)),
    # ... state1, state2, absmax1, absmax2, n, (same scalars as above)
    "kbit_optimizer_update_8bit_blockwise": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _vp, _vp, _i64) + (_f32,) * 10
                                             + (_i32, _vp, _i32)),
    "kbit_managed_alloc": (_c_int, (ctypes.POINTER(_vp), _i64)),
    "kbit_managed_free": (_c_int, (_vp,)),
}

STATUS_ERRORS = {
    1: (_errors.NativeArgumentError, "check the arguments; please report it if kbit's Python layer let this through"),
    2: (_errors.NoDriverError, "install or update the NVIDIA driver (nvidia-smi shows its CUDA version)"),
    3: (_errors.NoDeviceError, "check nvidia-smi and CUDA_VISIBLE_DEVICES"),
    4: (_errors.NoKernelImageError, "use a kbit variant whose archs cover this GPU"),
    5: (_errors.CudaError, "see the CUDA error above"),
    6: (_errors.InternalError, "this is a kbit bug: please report it with kbit's build info"),
}
