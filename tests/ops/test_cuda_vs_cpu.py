"""The CUDA kernels against the CPU library, on the same inputs (every test here is marked `cuda`).

Both libraries compile the same numerics headers with floating-point contraction off, so the rule is bits:
 - 8-bit and 4-bit codes and absmax are bit-identical, for every dtype, a spread of blocksizes, odd sizes,
   all-zero blocks and blocks holding inf / NaN;
 - dequantize outputs are bit-identical (compared as integers, so NaN payloads and signed zeros count);
 - gemv_4bit shares its summation order with the CPU (csrc/numerics/blockwise4.h), so it is bit-identical too;
 - every optimizer of kbit.optim, 8-bit and 32-bit, paged or not, gives bit-identical parameters and states
   after 20 steps;
 - torch's current stream is the one kbit launches on, and a tensor on cuda:1 is served on cuda:1.

kbit is used through its public API only (kbit.functional, kbit.optim, kbit.nn). ci/gpu_check.py runs these
against a package that bundles the CUDA variant built for the GPU at hand.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import kbit
import kbit.functional as F
import kbit.nn
import kbit.optim as O

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes on the CPU, so that equality means bit-identity (NaN == NaN, -0.0 != 0.0)."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)


def assert_same_bits(gpu: torch.Tensor, cpu: torch.Tensor, what: str) -> None:
    assert gpu.device.type == "cuda", f"{what}: the GPU result lives on {gpu.device}"
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, f"{what}: {gpu.dtype}{tuple(gpu.shape)} vs {cpu.dtype}{tuple(cpu.shape)}"
    g, c = bits(gpu), bits(cpu)
    if not torch.equal(g, c):
        where = (g != c).nonzero()[0].item() // cpu.element_size()
        raise AssertionError(f"{what}: GPU and CPU differ first at element {where}: "
                             f"{gpu.reshape(-1)[where].item()!r} vs {cpu.reshape(-1)[where].item()!r}")


def awkward(shape, dtype, seed: int, blocksize: int) -> torch.Tensor:
    """Random values with an all-zero block, a block holding inf, one holding NaN and a tiny negative value."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[-1])).to(dtype)
    flat = x.view(-1)
    n = flat.numel()
    if n > 4 * blocksize:
        flat[blocksize:2 * blocksize] = 0
        flat[2 * blocksize + 5] = math.inf
        flat[3 * blocksize + 1] = math.nan
    flat[-1] = -1e-30
    return x


# --------------------------------------------------------------------------------------------- 8-bit

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [64, 128, 256, 512, 1024, 2048, 4096])
def test_8bit_codes_absmax_and_dequantize_are_bit_identical(dtype, blocksize):
    for shape in ((1000, 257), (7,), (3 * blocksize + 1,)):
        x = awkward(shape, dtype, seed=blocksize, blocksize=blocksize)
        c_cpu, s_cpu = F.quantize_blockwise(x, blocksize=blocksize)
        c_gpu, s_gpu = F.quantize_blockwise(x.cuda(), blocksize=blocksize)
        assert_same_bits(c_gpu, c_cpu, f"8-bit codes {shape} bs {blocksize}")
        assert_same_bits(s_gpu.absmax, s_cpu.absmax, f"8-bit absmax {shape} bs {blocksize}")
        assert_same_bits(F.dequantize_blockwise(c_gpu, s_gpu), F.dequantize_blockwise(c_cpu, s_cpu),
                         f"8-bit dequantize {shape} bs {blocksize}")


def test_8bit_dequantize_into_out_on_the_gpu_matches_the_cpu():
    x = torch.randn(4096 * 33 + 3)
    codes, state = F.quantize_blockwise(x, blocksize=256)
    out = torch.empty(x.shape, device="cuda")
    gpu_state = F.BlockwiseQuantState(state.absmax.cuda(), state.code.cuda(), 256, x.dtype, x.shape)
    assert F.dequantize_blockwise(codes.cuda(), gpu_state, out=out) is out
    assert_same_bits(out, F.dequantize_blockwise(codes, state), "8-bit dequantize out=")


# --------------------------------------------------------------------------------------------- 4-bit

@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 1024, 4096])
def test_4bit_codes_absmax_and_dequantize_are_bit_identical(quant_type, dtype, blocksize):
    for shape in ((513, 129), (5,), (4 * blocksize + 3,)):
        x = awkward(shape, dtype, seed=blocksize + 1, blocksize=blocksize)
        p_cpu, s_cpu = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type)
        p_gpu, s_gpu = F.quantize_4bit(x.cuda(), blocksize=blocksize, quant_type=quant_type)
        what = f"4-bit {quant_type} {shape} bs {blocksize}"
        assert_same_bits(p_gpu, p_cpu, what + " codes")
        assert_same_bits(s_gpu.absmax, s_cpu.absmax, what + " absmax")
        assert_same_bits(F.dequantize_4bit(p_gpu, s_gpu), F.dequantize_4bit(p_cpu, s_cpu), what + " dequantize")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_double_quantization_on_the_gpu_matches_the_cpu(quant_type):
    """The 4-bit codes and the 8-bit codes of absmax - offset are bit-identical; the offset is torch's mean of
    absmax on the tensor's device, whose summation order is torch's (so it is compared to float32 rounding), and
    dequantizing the same state gives the same bits on both devices."""
    x = torch.randn(777, 515, generator=torch.Generator().manual_seed(3))
    p_gpu, s_gpu = F.quantize_4bit(x.cuda(), blocksize=64, quant_type=quant_type, compress_statistics=True)
    p_cpu, s_cpu = F.quantize_4bit(x, blocksize=64, quant_type=quant_type, compress_statistics=True)
    assert_same_bits(p_gpu, p_cpu, "nested 4-bit codes")
    assert s_gpu.nested and s_cpu.nested
    torch.testing.assert_close(s_gpu.offset.cpu(), s_cpu.offset, rtol=2e-7, atol=0)
    same_state = F.QuantState.from_dict(s_gpu.as_dict(), device="cpu")
    assert_same_bits(F.dequantize_4bit(p_gpu, s_gpu), F.dequantize_4bit(p_gpu.cpu(), same_state), "nested dequantize")


# --------------------------------------------------------------------------------------------- gemv

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(4096, 4096), (11008, 4096), (333, 1001)], ids=lambda s: "x".join(map(str, s)))
def test_gemv_4bit_batch_1_shares_the_cpu_summation_order_bit_for_bit(dtype, quant_type, shape):
    g = torch.Generator().manual_seed(shape[0])
    W = torch.randn(shape, generator=g) * 0.02
    A = torch.randn(1, shape[1], generator=g).to(dtype)
    bias = torch.randn(shape[0], generator=g).to(dtype)
    packed, state = F.quantize_4bit(W.to(dtype), blocksize=64, quant_type=quant_type)
    for b in (None, bias):
        cpu = F.gemv_4bit(A, packed, state, b)
        gpu = F.gemv_4bit(A.cuda(), packed.cuda(), F.QuantState.from_dict(state.as_dict(), device="cuda"),
                          None if b is None else b.cuda())
        assert_same_bits(gpu, cpu, f"gemv_4bit {shape} {dtype} bias={b is not None}")


@pytest.mark.parametrize("rows", [2, 7])
def test_gemv_4bit_with_several_rows_and_a_nested_state_matches_the_cpu(rows):
    W = torch.randn(300, 520, generator=torch.Generator().manual_seed(rows))
    A = torch.randn(rows, 3, 520).to(torch.bfloat16)
    packed, state = F.quantize_4bit(W, blocksize=128, compress_statistics=True)
    cpu = F.gemv_4bit(A, packed, state)
    gpu = F.gemv_4bit(A.cuda(), packed.cuda(), F.QuantState.from_dict(state.as_dict(), device="cuda"))
    assert_same_bits(gpu, cpu, f"gemv_4bit rows={rows} nested")


@pytest.mark.parametrize("rows", [1, 8, 11])
@pytest.mark.parametrize("byte_offset", [0, 1], ids=["aligned", "misaligned"])
def test_gemv_4bit_vector_loads_and_byte_loads_both_match_the_cpu(rows, byte_offset):
    """K % 32 == 0 with a 16-byte aligned weight takes the GPU's staged 16-byte loads; a weight starting one byte
    into its storage takes the byte-by-byte loads; rows above 8 take a second pass over the weight row."""
    W = torch.randn(96, 1024, generator=torch.Generator().manual_seed(rows))
    A = torch.randn(rows, 1024).to(torch.float16)
    packed, state = F.quantize_4bit(W, blocksize=64)
    storage = torch.empty(packed.numel() + 1, dtype=torch.uint8)
    storage[byte_offset:byte_offset + packed.numel()] = packed.reshape(-1)
    shifted = storage[byte_offset:byte_offset + packed.numel()]
    cpu = F.gemv_4bit(A, packed, state)
    gpu_storage = storage.cuda()
    gpu = F.gemv_4bit(A.cuda(), gpu_storage[byte_offset:byte_offset + packed.numel()],
                      F.QuantState.from_dict(state.as_dict(), device="cuda"))
    assert torch.equal(F.gemv_4bit(A, shifted, state), cpu)
    assert_same_bits(gpu, cpu, f"gemv_4bit rows={rows} offset={byte_offset}")


def test_linear4bit_large_batch_on_the_gpu_is_close_to_the_cpu_layer():
    """Above the gemv rows, both devices dequantize tiles and call their own matmul (MKL, cuBLAS): close, not equal."""
    torch.manual_seed(1)
    layer = kbit.nn.Linear4bit(512, 384, compress_statistics=True)
    x = torch.randn(64, 512)
    cpu = layer(x)
    gpu = layer.cuda()(x.cuda()).cpu()
    assert torch.allclose(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_linear4bit_forward_on_the_gpu_matches_the_cpu_layer():
    torch.manual_seed(0)
    dense = torch.nn.Linear(640, 320).to(torch.float16)
    layer = kbit.nn.Linear4bit.from_linear(dense, quant_type="nf4")
    x = torch.randn(1, 640, dtype=torch.float16)
    cpu = layer(x)
    gpu = layer.cuda()(x.cuda())
    assert_same_bits(gpu, cpu, "Linear4bit forward")


# --------------------------------------------------------------------------------------------- optimizers

def _optimizer_classes() -> dict[str, type]:
    """Every concrete optimizer of kbit.optim's public API (the generic classes are run at 8 and 32 bits)."""
    out = {}
    for name in O.__all__:
        cls = getattr(O, name)
        if cls is O.KbitOptimizer:
            continue
        out[name] = cls
    return out


OPTIMIZERS = _optimizer_classes()
KWARGS = {"SGD": dict(lr=0.01, momentum=0.9, weight_decay=0.01), "SGD8bit": dict(lr=0.01, momentum=0.9),
          "SGD32bit": dict(lr=0.01, momentum=0.9, weight_decay=0.01), "RMSprop32bit": dict(weight_decay=0.01),
          "Adagrad32bit": dict(weight_decay=0.01), "Adam8bit": dict(weight_decay=0.01)}
CONFIGS = [(name, bits) for name in OPTIMIZERS
           for bits in ((8, 32) if not name.endswith(("8bit", "32bit")) else (None,))]


def _run_steps(cls, kwargs, device, init, grads):
    p = torch.nn.Parameter(init.clone().to(device))
    with warnings.catch_warnings():
        # a Paged* optimizer on CPU says once that paging has no effect there; the GPU run must say nothing
        if device == "cpu":
            warnings.simplefilter("ignore", UserWarning)
        else:
            warnings.simplefilter("error", kbit.KbitWarning)
        opt = cls([p], **kwargs)
        for grad in grads:
            p.grad = grad.to(device)
            opt.step()
    states = {k: v for k, v in opt.state[p].items() if torch.is_tensor(v)}
    return p.detach(), states


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, optim_bits", CONFIGS, ids=[f"{n}-{b}" if b else n for n, b in CONFIGS])
def test_every_optimizer_is_bit_identical_to_the_cpu_over_20_steps(name, optim_bits, dtype):
    cls = OPTIMIZERS[name]
    kwargs = dict(KWARGS.get(name, {}))
    if optim_bits is not None:
        kwargs["optim_bits"] = optim_bits
    g = torch.Generator().manual_seed(len(name))
    # 333 x 301 = 100233 elements: above the paging threshold and min_8bit_size, and not a multiple of a block
    init = torch.randn(333, 301, generator=g).to(dtype)
    grads = [(torch.randn(333, 301, generator=g) * (1 + i % 3)).to(dtype) for i in range(20)]
    p_cpu, s_cpu = _run_steps(cls, kwargs, "cpu", init, grads)
    p_gpu, s_gpu = _run_steps(cls, kwargs, "cuda", init, grads)
    assert sorted(s_gpu) == sorted(s_cpu)
    assert_same_bits(p_gpu, p_cpu, f"{name} parameter after 20 steps")
    for key in s_cpu:
        assert_same_bits(s_gpu[key].to("cuda"), s_cpu[key], f"{name} state {key!r} after 20 steps")


# --------------------------------------------------------------------------------------------- streams and devices

def test_kbit_launches_on_torchs_current_stream_not_the_default_one():
    """On a side stream, the input is written after a long GPU sleep; kbit's kernels must queue behind it on that
    stream. Launched on another stream, they would read the zeros that were there before."""
    x_cpu = torch.randn(1 << 20, generator=torch.Generator().manual_seed(5))
    src = x_cpu.cuda()
    x = torch.zeros_like(src)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued on the side stream
        x.copy_(src)
        codes, state = F.quantize_blockwise(x, blocksize=256)
        packed, qstate = F.quantize_4bit(x, blocksize=64)
        deq = F.dequantize_blockwise(codes, state)
        done = torch.cuda.Event()
        done.record(side)
    assert not done.query(), "the side stream finished before the sleep did: the check cannot tell streams apart"
    side.synchronize()
    c_cpu, s_cpu = F.quantize_blockwise(x_cpu, blocksize=256)
    assert_same_bits(codes, c_cpu, "8-bit codes on a side stream")
    assert_same_bits(deq, F.dequantize_blockwise(c_cpu, s_cpu), "8-bit dequantize on a side stream")
    assert_same_bits(packed, F.quantize_4bit(x_cpu, blocksize=64)[0], "4-bit codes on a side stream")


def test_an_optimizer_step_runs_on_the_current_stream():
    init = torch.randn(512, 512, generator=torch.Generator().manual_seed(6))
    grad = torch.randn(512, 512, generator=torch.Generator().manual_seed(7))
    p = torch.nn.Parameter(init.cuda())
    g = torch.zeros_like(p)
    side = torch.cuda.Stream()
    opt = O.AdamW8bit([p])
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        g.copy_(grad.cuda())
        p.grad = g
        opt.step()
    side.synchronize()
    q = torch.nn.Parameter(init.clone())
    q.grad = grad
    ref = O.AdamW8bit([q])
    ref.step()
    assert_same_bits(p.detach(), q.detach(), "AdamW8bit step on a side stream")


def test_a_tensor_on_cuda_1_is_served_there_while_cuda_0_is_current():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs; this machine has {torch.cuda.device_count()}")
    x = torch.randn(4096 * 3 + 5)
    torch.cuda.set_device(0)
    codes, state = F.quantize_blockwise(x.to("cuda:1"), blocksize=512)
    assert codes.device == torch.device("cuda:1") and state.absmax.device == torch.device("cuda:1")
    c_cpu, s_cpu = F.quantize_blockwise(x, blocksize=512)
    assert torch.equal(codes.cpu(), c_cpu) and torch.equal(bits(state.absmax), bits(s_cpu.absmax))
    packed, qstate = F.quantize_4bit(x.to("cuda:1"), blocksize=64)
    assert_same_bits(F.dequantize_4bit(packed, qstate), F.dequantize_4bit(*F.quantize_4bit(x, blocksize=64)),
                     "4-bit round trip on cuda:1")
    p = torch.nn.Parameter(torch.randn(300, 400, device="cuda:1"))
    p.grad = torch.randn_like(p)
    q = torch.nn.Parameter(p.detach().cpu())
    q.grad = p.grad.cpu()
    O.AdamW8bit([p]).step()
    O.AdamW8bit([q]).step()
    assert p.device == torch.device("cuda:1")
    assert_same_bits(p.detach(), q.detach(), "AdamW8bit step on cuda:1")
    assert torch.cuda.current_device() == 0
