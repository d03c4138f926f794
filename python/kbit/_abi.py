"""The C ABI of csrc/kbit.h as Python sees it: the ABI version, every enum and constant, the
kbit_optim_params struct, every exported function's ctypes prototype, and which typed error each failure
status becomes.

This module owns only declarations, and it is the one Python copy of them: every other module takes its ABI
numbers from here. tests/runtime/test_abi.py parses csrc/kbit.h and fails when anything here differs from it (enum
values, defines, struct fields, prototypes' parameter types and order). Loading libraries is kbit._native's
job; which library serves a tensor is kbit._dispatch's. When something is added to csrc/kbit.h, it is added
here too.
"""
from __future__ import annotations

import ctypes

from kbit import _errors

ABI_VERSION = 6  # KBIT_ABI_VERSION

# kbit_status
OK, ERR_INVALID_ARGUMENT, ERR_NO_DRIVER, ERR_NO_DEVICE, ERR_NO_KERNEL_IMAGE, ERR_CUDA, ERR_INTERNAL = range(7)

# kbit_dtype
F32, F16, BF16 = 0, 1, 2

# kbit_map, and the number of values of each map
MAP_DYNAMIC_SIGNED, MAP_DYNAMIC_UNSIGNED, MAP_NF4, MAP_FP4 = 0, 1, 2, 3
MAP_SIZE_8BIT, MAP_SIZE_4BIT = 256, 16

# kbit_quant4
NF4, FP4 = 0, 1

# block sizes (powers of two in [MIN, MAX]) and the quant block of the 8-bit optimizer states
BLOCKSIZE_8BIT_MIN, BLOCKSIZE_8BIT_MAX = 64, 4096
BLOCKSIZE_8BIT_MAX_CPU = 16384  # the CPU library's _map functions
BLOCKSIZE_4BIT_MIN, BLOCKSIZE_4BIT_MAX = 32, 4096
OPTIM_BLOCKSIZE = 256

# kbit_cpu_threads_kind: which threads run the CPU loops (kbit_cpu_threads)
THREADS_HOST_OPENMP, THREADS_OWN_TEAM, THREADS_PER_CALL, THREADS_NONE = range(4)

# kbit_optimizer (bitsandbytes' Optimizer_t numbering)
OPTIM_ADAM, OPTIM_MOMENTUM, OPTIM_RMSPROP, OPTIM_ADAGRAD, OPTIM_LION, OPTIM_ADEMAMIX = 0, 1, 2, 4, 5, 6


def optim_state_count(kind: int) -> int:
    """How many states an optimizer kind keeps (kbit.h, kbit_optimizer; csrc/numerics/optim.h state_count):
    ADAM 2, ADEMAMIX 3 (its third after the first, in state1), every other kind 1. tests/runtime/test_abi.py checks this
    against what the library refuses (a NULL state2 for a kind that keeps two)."""
    return 2 if kind == OPTIM_ADAM else 3 if kind == OPTIM_ADEMAMIX else 1


class OptimParams(ctypes.Structure):
    """kbit_optim_params: the scalars of one optimizer step (size = ctypes.sizeof(OptimParams))."""

    _fields_ = [("size", ctypes.c_uint32), ("lr", ctypes.c_float), ("beta1", ctypes.c_float),
                ("beta2", ctypes.c_float), ("beta3", ctypes.c_float), ("alpha", ctypes.c_float),
                ("eps", ctypes.c_float), ("weight_decay", ctypes.c_float), ("correction1", ctypes.c_float),
                ("correction2", ctypes.c_float), ("gnorm_scale", ctypes.c_float), ("step", ctypes.c_int32)]


_c_int, _i32, _i64, _vp = ctypes.c_int, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
_f32p, _u8p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint8)
_params = ctypes.POINTER(OptimParams)
# Pointer parameters are declared c_void_p (tensors pass their data_ptr()), except where Python passes a
# ctypes object: kbit_device_count's count, kbit_code_map's out, the optimizer params, kbit_managed_alloc's out,
# kbit_cpu_threads' kind and buffer.
PROTOTYPES: dict[str, tuple[type, tuple]] = {
    "kbit_abi_version": (_i32, ()),
    "kbit_build_info": (ctypes.c_char_p, ()),
    "kbit_last_error": (ctypes.c_char_p, ()),
    "kbit_device_count": (_c_int, (ctypes.POINTER(_i32),)),
    "kbit_code_map": (_c_int, (_i32, _f32p, _i32)),
    "kbit_quantize_blockwise_8bit": (_c_int, (_i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_dequantize_blockwise_8bit": (_c_int, (_i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_quantize_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_dequantize_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_gemv_4bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _vp, _i64, _i64, _i64, _i32, _vp, _i32)),
    "kbit_gemv_4bit_t": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _i64, _i64, _i64, _i32, _vp, _i32)),
    "kbit_optimizer_update_32bit": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _i64, _params, _vp, _i32)),
    "kbit_optimizer_update_8bit_blockwise": (_c_int, (_i32, _i32, _vp, _vp, _vp, _vp, _vp, _vp, _i64, _params,
                                                      _vp, _i32)),
    "kbit_managed_alloc": (_c_int, (ctypes.POINTER(_vp), _i64)),
    "kbit_managed_free": (_c_int, (_vp,)),
    "kbit_quantize_blockwise_8bit_map": (_c_int, (_i32, _vp, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_dequantize_blockwise_8bit_map": (_c_int, (_i32, _vp, _vp, _vp, _vp, _i64, _i32, _vp, _i32)),
    "kbit_int8_vectorwise_quant": (_c_int, (_i32, _vp, _vp, ctypes.c_float, _vp, _vp, _i64, _i64, _vp, _i32)),
    "kbit_int8_mm_dequant": (_c_int, (_i32, _vp, _vp, _vp, _vp, _vp, _i64, _i64, _vp, _i32)),
    "kbit_cpu_threads": (_c_int, (ctypes.POINTER(_i32), ctypes.c_char_p, _i32)),
}

STATUS_ERRORS = {
    ERR_INVALID_ARGUMENT: (_errors.NativeArgumentError,
                           "check the arguments; please report it if kbit's Python layer let this through"),
    ERR_NO_DRIVER: (_errors.NoDriverError, "install or update the NVIDIA driver (nvidia-smi shows its CUDA version)"),
    ERR_NO_DEVICE: (_errors.NoDeviceError, "check nvidia-smi and CUDA_VISIBLE_DEVICES"),
    ERR_NO_KERNEL_IMAGE: (_errors.NoKernelImageError, "use a kbit variant whose archs cover this GPU"),
    ERR_CUDA: (_errors.CudaError, "see the CUDA error above"),
    ERR_INTERNAL: (_errors.InternalError, "this is a kbit bug: please report it with kbit's build info"),
}
