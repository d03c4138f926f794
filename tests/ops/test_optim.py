"""kbit.optim on the CPU library: every optimizer against the plain-torch reference (tests/ops/optim_reference.py),
the published 8-bit-vs-32-bit accuracy figures, edges (small parameters, non-finite gradients), state_dict
round trips, thread-count independence, paging on CPU and errors. CUDA versions are marked `cuda`.

Two kinds of comparison are made, and each test says which:
  - exact: the reference applies the same formulas and (for 8-bit) the same quantize/dequantize of the
    states every step; parameters, codes, absmax and 32-bit states must be bit-identical;
  - published: 8-bit Adam against torch.optim.Adam in float32, with bitsandbytes' protocol and the
    tolerances published for bitsandbytes' 8-bit Adam.
"""
from __future__ import annotations

import copy
import ctypes
import io
import warnings

import pytest
import torch

import kbit
from kbit import _abi, _errors, _native
from kbit import optim as O

import optim_reference as R

# name: (kind, class, kwargs, reference hyperparameters (lr, betas, eps, wd, alpha))
CASES = {
    "adam": (R.ADAM, O.Adam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8), (1e-3, (0.9, 0.999), 1e-8, 0.0, 0.0)),
    "adamw": (R.ADAM, O.AdamW, dict(lr=1e-3, betas=(0.9, 0.995), eps=1e-8, weight_decay=1e-2),
              (1e-3, (0.9, 0.995), 1e-8, 1e-2, 0.0)),
    "ademamix": (R.ADEMAMIX, O.AdEMAMix, dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, weight_decay=1e-2),
                 (1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, 5.0)),
    "lion": (R.LION, O.Lion, dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-2), (1e-4, (0.9, 0.99), 0.0, 1e-2, 0.0)),
    "momentum": (R.MOMENTUM, O.SGD, dict(lr=1e-2, momentum=0.9, weight_decay=1e-2), (1e-2, (0.9, 0.0), 0.0, 1e-2, 0.0)),
    "rmsprop": (R.RMSPROP, O.RMSprop, dict(lr=1e-3, alpha=0.99, eps=1e-8, weight_decay=1e-2),
                (1e-3, (0.99, 0.0), 1e-8, 1e-2, 0.0)),
    "adagrad": (R.ADAGRAD, O.Adagrad, dict(lr=1e-2, eps=1e-10, weight_decay=1e-2), (1e-2, (0.0, 0.0), 1e-10, 1e-2, 0.0)),
}


def make_pair(name: str, shape, bits: int, dtype=torch.float32, seed=0):
    kind, cls, kwargs, (lr, betas, eps, wd, alpha) = CASES[name]
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.1).to(dtype))
    opt = cls([p], optim_bits=bits, **kwargs)
    ref = R.Reference(kind, p, bits, lr, betas, eps, wd, alpha)
    return p, opt, ref, g


def kbit_states(opt, p, kind) -> list[torch.Tensor]:
    """The dequantized (or float32) states of p in reference order (s1, s2, s3), flattened."""
    st = opt.state[p]
    n = p.numel()
    if st["state1"].dtype == torch.float32:
        s1 = st["state1"].reshape(-1)
        out = [s1[:n], st["state2"].reshape(-1) if "state2" in st else None, s1[n:] if kind == R.ADEMAMIX else None]
    else:
        a1 = st["absmax1"].reshape(-1)
        blocks = -(-n // R.BLOCK)
        c1 = st["state1"].reshape(-1)
        out = [R.dequantize(c1[:n], a1[:blocks], R.SMAP),
               R.dequantize(st["state2"].reshape(-1), st["absmax2"], R.UMAP) if "state2" in st else None,
               R.dequantize(c1[n:], a1[blocks:], R.SMAP) if kind == R.ADEMAMIX else None]
    return out


def run(p, opt, ref, gen, steps, scale=0.01):
    for _ in range(steps):
        grad = (torch.randn(p.shape, generator=gen) * scale).to(p.dtype)
        p.grad = grad.clone()
        opt.step()
        ref.step(grad)


def assert_exact(p, opt, ref, kind):
    assert torch.equal(p.detach().flatten(), ref.p), "parameters differ from the reference"
    for i, (mine, theirs) in enumerate(zip(kbit_states(opt, p, kind), ref.states())):
        if mine is not None:
            assert torch.equal(mine, theirs), f"state {i + 1} differs from the reference"


def test_reference_maps_are_the_published_ones():
    assert R.map_sha(R.SMAP) == R.SIGNED_SHA and R.map_sha(R.UMAP) == R.UNSIGNED_SHA


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("bits", [32, 8])
def test_every_optimizer_matches_the_reference_exactly_over_50_steps(name, bits):
    """exact: 50 steps on a (67, 129) parameter (8643 elements: 34 blocks, the last one partial)."""
    p, opt, ref, gen = make_pair(name, (67, 129), bits)
    run(p, opt, ref, gen, 50)
    st = opt.state[p]
    assert st["state1"].dtype == (torch.uint8 if bits == 8 else torch.float32) and st["step"] == 50
    assert_exact(p, opt, ref, CASES[name][0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", ["adamw", "ademamix", "lion"])
def test_half_precision_parameters_update_in_float32_and_round_to_nearest_even(name, bits, dtype):
    """exact: fp16/bf16 parameters and gradients; states stay float32 / uint8 + float32 absmax."""
    p, opt, ref, gen = make_pair(name, (33, 257), bits, dtype)
    run(p, opt, ref, gen, 20)
    assert p.dtype == dtype
    assert all(v.dtype in (torch.float32, torch.uint8) for v in opt.state[p].values() if torch.is_tensor(v))
    assert_exact(p, opt, ref, CASES[name][0])


def _published_errors(shape, dtype, seed=1):
    """kbit's Adam8bit against torch.optim.Adam in float32 (an independent float32 Adam: torch's own formula,
    denominator sqrt(v)/sqrt(1-b2^t) + eps), with bitsandbytes' protocol: every one of 50 steps starts both
    from the same point (torch's parameter rounded to the dtype, torch's states set to kbit's dequantized
    ones: "the parameters diverge quickly"), then that step's errors are measured. Returns the worst step's
    mean abs and mean relative parameter error and the most state elements outside atol 3e-3 / rtol 1e-3."""
    gen = torch.Generator().manual_seed(seed)
    # start from values the dtype represents (bitsandbytes creates p in the dtype): otherwise step 1 measures
    # the rounding of the start, not the optimizer
    p32 = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.1).to(dtype).float())
    p8 = torch.nn.Parameter(p32.detach().to(dtype, copy=True))  # its own storage, also for float32
    torch_adam = torch.optim.Adam([p32], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    kbit_adam = O.Adam8bit([p8], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    worst = [0.0, 0.0, 0]
    for _ in range(50):
        grad = (torch.randn(shape, generator=gen) * 0.01).to(dtype)
        p32.grad, p8.grad = grad.float(), grad.clone()
        torch_adam.step()
        kbit_adam.step()
        diff = (p32.detach() - p8.detach().float()).abs()
        rel = diff / (p32.detach().abs() + 1e-9)
        states = kbit_states(kbit_adam, p8, R.ADAM)
        st = torch_adam.state[p32]
        outside = max(int((~torch.isclose(st[k].flatten(), s, atol=3e-3, rtol=1e-3)).sum())
                      for k, s in (("exp_avg", states[0]), ("exp_avg_sq", states[1])))
        worst = [max(worst[0], diff.mean().item()), max(worst[1], rel.mean().item()), max(worst[2], outside)]
        with torch.no_grad():  # keep them together
            p32.copy_(p32.to(dtype).float())
            p8.copy_(p32)
            st["exp_avg"].copy_(states[0].view(shape))
            st["exp_avg_sq"].copy_(states[1].view(shape))
    return worst


@pytest.mark.parametrize("dtype,abs_tol,rel_tol", [(torch.float32, 6e-5, 6e-4), (torch.bfloat16, 1.7e-4, 1.6e-3)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("cols", [32, 1024, pytest.param(4097, marks=pytest.mark.slow)])
def test_8bit_adam_meets_the_published_accuracy_against_float32_adam(cols, dtype, abs_tol, rel_tol):
    """published: every step's parameter mean abs/rel error, and < 20 dequantized state elements outside
    atol 3e-3 / rtol 1e-3 of torch's float32 states, on 1024 x cols over 50 steps."""
    abs_err, rel_err, outside = _published_errors((1024, cols), dtype)
    assert abs_err < abs_tol and rel_err < rel_tol, (abs_err, rel_err)
    assert outside < 20, outside


@pytest.mark.parametrize("numel", [1, 255, 4095])
def test_parameters_below_min_8bit_size_keep_32bit_state(numel):
    p, opt, ref, gen = make_pair("adamw", (numel,), 32)
    opt8 = O.AdamW8bit([q := torch.nn.Parameter(p.detach().clone())], lr=1e-3, betas=(0.9, 0.995))
    for _ in range(3):
        grad = torch.randn(p.shape, generator=gen)
        p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        opt8.step()
    assert opt8.state[q]["state1"].dtype == torch.float32 and "absmax1" not in opt8.state[q]
    assert torch.equal(p, q) and torch.equal(opt.state[p]["state2"], opt8.state[q]["state2"])


def test_min_8bit_size_boundary_is_inclusive_at_4096():
    p = torch.nn.Parameter(torch.randn(4096))
    p.grad = torch.randn(4096)
    opt = O.Adam8bit([p])
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8 and opt.state[p]["absmax1"].shape == (16,)


@pytest.mark.parametrize("name", list(CASES))
def test_8bit_nonfinite_gradient_elements_zero_their_states_and_keep_their_parameter(name):
    """exact, with inf, -inf and NaN gradient elements in steps 3 and 4."""
    p, opt, ref, gen = make_pair(name, (40, 130), 8)
    run(p, opt, ref, gen, 2)
    for _ in range(2):
        grad = torch.randn(p.shape, generator=gen) * 0.01
        grad[0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
        before = p.detach()[0, :3].clone()
        p.grad = grad.clone()
        opt.step()
        ref.step(grad)
        assert torch.equal(p.detach()[0, :3], before)
        for s in kbit_states(opt, p, CASES[name][0]):
            if s is not None:
                assert torch.equal(s[:3], torch.zeros(3)) and torch.isfinite(s).all()
    assert_exact(p, opt, ref, CASES[name][0])
    assert torch.isfinite(p).all()


def test_an_overflowing_update_is_never_hidden_and_stores_the_canonical_nan():
    """A finite gradient whose square overflows makes state 2 inf (absmax inf); the next step dequantizes
    that block to NaN, so its absmax is NaN, stored as the canonical quiet NaN; other blocks are untouched."""
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = O.Adam8bit([p])
    g = torch.full((4096,), 1e-3)
    g[0] = 1e30
    p.grad = g.clone()
    opt.step()
    assert opt.state[p]["absmax2"][0] == float("inf") and torch.isfinite(opt.state[p]["absmax2"][1:]).all()
    p.grad = torch.full((4096,), 1e-3)
    opt.step()
    absmax2 = opt.state[p]["absmax2"]
    assert absmax2[:1].view(torch.int32).item() == 0x7FC00000 and torch.isfinite(absmax2[1:]).all()
    assert torch.isnan(p[:256]).all() and torch.isfinite(p[256:]).all()


def test_32bit_nonfinite_gradients_propagate_like_bitsandbytes_32bit_kernels():
    p = torch.nn.Parameter(torch.zeros(8))
    g = torch.zeros(8)
    g[1] = float("nan")
    p.grad = g
    opt = O.Adam32bit([p])
    opt.step()
    assert torch.isnan(p[1]) and torch.isnan(opt.state[p]["state1"][1]) and torch.isfinite(p[[0, 2]]).all()


@pytest.mark.parametrize("name,bits,dtype", [("adamw", 8, torch.float16), ("adamw", 8, torch.bfloat16),
                                             ("ademamix", 8, torch.float32), ("lion", 8, torch.float32),
                                             ("adamw", 32, torch.float16), ("momentum", 32, torch.float32)])
def test_state_dict_round_trip_mid_training_continues_bit_identically(name, bits, dtype):
    """Save after 5 steps through torch.save into a BytesIO, load into a fresh optimizer, continue 5 steps."""
    kind, cls, kwargs, _ = CASES[name]
    g = torch.Generator().manual_seed(3)
    init = (torch.randn(70, 90, generator=g) * 0.1).to(dtype)
    grads = [(torch.randn(70, 90, generator=g) * 0.01).to(dtype) for _ in range(10)]
    a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_a, opt_b = cls([a], optim_bits=bits, **kwargs), cls([b], optim_bits=bits, **kwargs)
    for grad in grads[:5]:
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    buf.seek(0)
    opt_c = cls([b], optim_bits=bits, **kwargs)
    opt_c.load_state_dict(torch.load(buf, weights_only=False))
    saved = opt_b.state[b]
    for k, v in opt_c.state[b].items():
        if torch.is_tensor(v):
            assert v.dtype == saved[k].dtype and torch.equal(v, saved[k]), k
            assert v.data_ptr() != saved[k].data_ptr(), f"{k} must be a copy"
    for grad in grads[5:]:
        a.grad, b.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_c.step()
    assert torch.equal(a, b)
    assert all(torch.equal(v, opt_c.state[b][k]) for k, v in opt_a.state[a].items() if torch.is_tensor(v))
    assert opt_c.state[b]["step"] == 10


def test_load_state_dict_refuses_a_state_of_another_shape():
    a = torch.nn.Parameter(torch.randn(64, 128))
    a.grad = torch.randn(64, 128)
    opt = O.AdamW8bit([a])
    opt.step()
    other = O.AdamW8bit([torch.nn.Parameter(torch.randn(64, 64))])
    with pytest.raises(kbit.KbitValueError, match="does not fit"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("cls", [O.AdamW8bit, O.AdEMAMix8bit, O.Lion8bit, O.AdamW32bit])
def test_results_do_not_depend_on_the_thread_count(cls):
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(5)
            p = torch.nn.Parameter(torch.randn(300, 301, generator=g))
            opt = cls([p])
            for _ in range(4):
                p.grad = torch.randn(p.shape, generator=g)
                opt.step()
            results.append((p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}))
    finally:
        torch.set_num_threads(old)
    (p1, s1), (p2, s2) = results
    assert torch.equal(p1, p2) and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_noncontiguous_parameters_are_updated_in_place():
    base = torch.randn(128, 96)
    p = torch.nn.Parameter(base.t())  # a transposed view: not contiguous
    q = torch.nn.Parameter(base.t().contiguous())
    grad = torch.randn(96, 128)
    p.grad, q.grad = grad.clone(), grad.clone()
    O.AdamW8bit([p]).step()
    O.AdamW8bit([q]).step()
    assert torch.equal(p, q) and not p.is_contiguous()


def test_sign_fix_keeps_tiny_negative_states_negative():
    """bitsandbytes' sign rule: a signed state whose nearest code is +0 but which is negative steps one code
    down (126, the smallest negative value); a tiny positive state stays at the zero code (127)."""
    p = torch.nn.Parameter(torch.zeros(4096))
    g = torch.zeros(4096)
    g[0], g[1], g[2] = 1.0, -1e-9, 1e-9  # Momentum's first state is g itself
    p.grad = g
    opt = O.SGD8bit([p], lr=0.1, momentum=0.9)
    opt.step()
    codes = opt.state[p]["state1"]
    assert codes[:3].tolist() == [255, 126, 127] and opt.state[p]["absmax1"][0] == 1.0
    assert R.SMAP[126] < 0 and R.SMAP[127] == 0


def test_state_names_and_layout_are_bitsandbytes():
    p = torch.nn.Parameter(torch.randn(4100))
    p.grad = torch.randn(4100)
    opt = O.AdEMAMix8bit([p])
    opt.step()
    st = opt.state[p]
    assert set(st) == {"step", "state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2"}
    assert st["state1"].shape == (2, 4100) and st["absmax1"].shape == (2, 17) and st["absmax2"].shape == (17,)
    assert torch.equal(st["qmap1"], R.SMAP) and torch.equal(st["qmap2"], R.UMAP)


# ------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,match", [(dict(lr=-1e-3), "lr"), (dict(betas=(1.0, 0.999)), "betas"),
                                          (dict(betas=(0.9, -0.1)), "betas"), (dict(eps=-1e-8), "eps"),
                                          (dict(weight_decay=-0.1), "weight_decay"), (dict(lr=float("nan")), "lr"),
                                          (dict(optim_bits=16), "optim_bits")])
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(kbit.KbitValueError, match=match):
        O.Adam([torch.nn.Parameter(torch.randn(4))], **kwargs)


def test_a_bad_learning_rate_set_after_construction_is_refused_at_step():
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    opt = O.AdamW8bit([p])
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(kbit.KbitValueError, match="lr"):
        opt.step()


def test_sparse_gradients_are_refused():
    emb = torch.nn.Embedding(100, 64, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(kbit.KbitValueError, match="sparse"):
        O.Adam8bit(emb.parameters()).step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64], ids=str)
def test_unsupported_trainable_parameter_dtypes_are_refused(dtype):
    with pytest.raises(kbit.KbitValueError, match="dtype"):
        O.AdamW8bit([torch.zeros(8, dtype=dtype, requires_grad=True)])


def test_a_model_with_a_frozen_4bit_layer_trains_its_other_parameters():
    model = torch.nn.Sequential(kbit.nn.Linear4bit(64, 8), torch.nn.Linear(8, 4))
    opt = O.AdamW(model.parameters(), lr=1e-2)  # the uint8 weight is frozen; torch.optim accepts it too
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(3, 64)).square().sum().backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    frozen = [not p.requires_grad for p in model.parameters()]
    assert changed == [not f for f in frozen] and any(frozen)


def _trained(opt_class, **kw):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(100, 80))
    opt = opt_class([p], **kw)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    return p, opt


@pytest.mark.parametrize("opt_class", [O.Adam8bit, O.Adam32bit], ids=lambda c: c.__name__)
def test_loaded_states_that_are_strided_views_give_the_same_next_step(opt_class):
    p, opt = _trained(opt_class)
    sd = opt.state_dict()
    strided = copy.deepcopy(sd)
    for k in ("state1", "state2"):
        strided["state"][0][k] = strided["state"][0][k].t().contiguous().t()  # same values, other strides
        assert not strided["state"][0][k].is_contiguous()
    grad = torch.randn_like(p)
    results = []
    for d in (sd, strided):
        q = torch.nn.Parameter(p.detach().clone())
        o = opt_class([q])
        o.load_state_dict(d)
        q.grad = grad.clone()
        o.step()
        results.append(q.detach())
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("step", [torch.tensor(3.0), 3.0, torch.tensor(3)], ids=["tensor-float", "float", "tensor-int"])
def test_a_torch_style_step_in_the_state_is_accepted(step):
    p, opt = _trained(O.Adam8bit)
    sd = opt.state_dict()
    sd["state"][0]["step"] = step
    q = torch.nn.Parameter(p.detach().clone())
    o = O.Adam8bit([q])
    o.load_state_dict(sd)
    q.grad = torch.ones_like(q)
    o.step()
    assert o.state[q]["step"] == 4


@pytest.mark.parametrize("step", [1.5, "3", -1, torch.ones(2)], ids=repr)
def test_a_bad_step_is_refused(step):
    p, opt = _trained(O.Adam8bit)
    sd = opt.state_dict()
    sd["state"][0]["step"] = step
    with pytest.raises(kbit.KbitValueError, match="'step'"):
        O.Adam8bit([torch.nn.Parameter(p.detach().clone())]).load_state_dict(sd)


def test_a_refused_load_leaves_the_optimizer_as_it_was():
    p, opt = _trained(O.Adam8bit)
    twin_p, twin = _trained(O.Adam8bit)
    bad = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the live state dicts
    bad["state"][0]["absmax1"] = torch.zeros(3)
    with pytest.raises(kbit.KbitValueError, match="absmax1"):
        opt.load_state_dict(bad)
    grad = torch.randn_like(p)
    p.grad, twin_p.grad = grad.clone(), grad.clone()
    opt.step()
    twin.step()
    assert torch.equal(p, twin_p)


@pytest.mark.parametrize("betas", [None, 5, (0.9,)], ids=repr)
def test_malformed_betas_get_a_typed_error(betas):
    with pytest.raises(kbit.KbitValueError, match="betas"):
        O.Adam([torch.nn.Parameter(torch.zeros(4))], betas=betas)


def test_momentum_and_alpha_errors_name_the_argument():
    with pytest.raises(kbit.KbitValueError, match="momentum=1.0"):
        O.SGD([torch.nn.Parameter(torch.zeros(4))], lr=0.1, momentum=1.0)
    with pytest.raises(kbit.KbitValueError, match="alpha=1.5"):
        O.RMSprop([torch.nn.Parameter(torch.zeros(4))], alpha=1.5)


@pytest.mark.parametrize("make,match", [(lambda ps: O.SGD8bit(ps, lr=0.1), "momentum"),
                                        (lambda ps: O.Adam(ps, amsgrad=True), "amsgrad"),
                                        (lambda ps: O.RMSprop(ps, centered=True), "centered"),
                                        (lambda ps: O.Adagrad(ps, lr_decay=0.1), "lr_decay")])
def test_unsupported_options_are_refused_not_ignored(make, match):
    with pytest.raises(kbit.KbitValueError, match=match):
        make([torch.nn.Parameter(torch.randn(4))])


def test_the_fixed_variants_fix_their_bits():
    with pytest.raises(TypeError, match="optim_bits"):
        O.Adam8bit([torch.nn.Parameter(torch.randn(4))], optim_bits=32)
    assert O.PagedAdamW8bit([torch.nn.Parameter(torch.randn(4))]).is_paged


# ------------------------------------------------------------------------------------------- paging

def test_paged_optimizers_on_cpu_warn_exactly_once_and_match_the_unpaged_one():
    params = [torch.nn.Parameter(torch.randn(200, 600)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    paged, plain = O.PagedAdamW8bit(params), O.AdamW8bit(twins)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for p, q in zip(params, twins):
                p.grad = torch.ones_like(p)
                q.grad = torch.ones_like(q)
            paged.step()
            plain.step()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "paging has no effect on CPU" in messages[0], messages
    assert all(torch.equal(p, q) for p, q in zip(params, twins))


def test_cpu_library_refuses_managed_memory_with_an_explanation():
    out = ctypes.c_void_p(123)
    with pytest.raises(kbit.NativeArgumentError, match="needs a CUDA library"):
        _native.cpu().call("kbit_managed_alloc", ctypes.byref(out), 1024)
    assert out.value is None
    _native.cpu().call("kbit_managed_free", None)  # NULL is a no-op


def test_native_checks_refuse_a_missing_second_state():
    p, g = torch.zeros(8), torch.zeros(8)
    s1 = torch.zeros(8)
    with pytest.raises(_errors.NativeArgumentError, match="state2 is NULL"):
        params = _abi.OptimParams(ctypes.sizeof(_abi.OptimParams), 1e-3, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 0.1, 0.1, 1.0, 1)
        _native.cpu().call("kbit_optimizer_update_32bit", _abi.OPTIM_ADAM, _abi.F32, p.data_ptr(), g.data_ptr(),
                           s1.data_ptr(), None, 8, ctypes.byref(params), None, 1)


# ------------------------------------------------------------------------------------------- CUDA

def _cpu_vs_cuda(cls, dtype, steps=20):
    g = torch.Generator().manual_seed(9)
    init = torch.randn(257, 300, generator=g).to(dtype)
    grads = [torch.randn(257, 300, generator=g).to(dtype) for _ in range(steps)]
    out = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(init.clone().to(device))
        opt = cls([p])
        for grad in grads:
            p.grad = grad.to(device)
            opt.step()
        out.append((p.detach().cpu(), {k: v.cpu() for k, v in opt.state[p].items() if torch.is_tensor(v)}))
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("cls", [O.Adam8bit, O.AdamW8bit, O.AdEMAMix8bit, O.Lion8bit,
                                 lambda ps: O.SGD8bit(ps, lr=0.01, momentum=0.9), O.RMSprop8bit, O.Adagrad8bit,
                                 O.Adam32bit, O.AdamW32bit, O.AdEMAMix32bit, O.Lion32bit,
                                 lambda ps: O.SGD32bit(ps, lr=0.01, momentum=0.9, weight_decay=0.01), O.RMSprop32bit,
                                 O.Adagrad32bit],
                         ids=["Adam8bit", "AdamW8bit", "AdEMAMix8bit", "Lion8bit", "SGD8bit", "RMSprop8bit",
                              "Adagrad8bit", "Adam32bit", "AdamW32bit", "AdEMAMix32bit", "Lion32bit", "SGD32bit",
                              "RMSprop32bit", "Adagrad32bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_updates_are_bit_identical_to_cpu(cls, dtype):
    (pc, sc), (pg, sg) = _cpu_vs_cuda(cls, dtype)
    assert torch.equal(pc, pg) and all(torch.equal(sc[k], sg[k]) for k in sc)


@pytest.mark.cuda
def test_cuda_paged_states_live_in_managed_memory_and_match_unpaged():
    g = torch.Generator().manual_seed(2)
    init, grad = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)
    p, q = torch.nn.Parameter(init.cuda()), torch.nn.Parameter(init.cuda())
    p.grad, q.grad = grad.cuda(), grad.cuda()
    paged, plain = O.PagedAdamW8bit([p]), O.AdamW8bit([q])
    before = torch.cuda.memory_allocated()
    paged.step()
    torch.cuda.synchronize()
    # the two uint8 states (2 * numel bytes) come from cudaMallocManaged, not from torch's allocator
    assert torch.cuda.memory_allocated() - before < p.numel()
    plain.step()
    assert torch.equal(p, q) and torch.equal(paged.state[p]["state1"], plain.state[q]["state1"])
    r = torch.nn.Parameter(init.clone())  # and both are the CPU library's step on the same inputs
    r.grad = grad.clone()
    cpu = O.AdamW8bit([r])
    cpu.step()
    assert torch.equal(p.detach().cpu(), r.detach())
    assert all(torch.equal(paged.state[p][k].cpu(), v) for k, v in cpu.state[r].items() if torch.is_tensor(v))


@pytest.mark.cuda
def test_cuda_state_dict_moves_to_cpu_exactly():
    p = torch.nn.Parameter(torch.randn(128, 128, device="cuda", dtype=torch.float16))
    p.grad = torch.randn_like(p)
    opt = O.AdamW8bit([p])
    opt.step()
    q = torch.nn.Parameter(p.detach().cpu())
    opt_cpu = O.AdamW8bit([q])
    opt_cpu.load_state_dict(opt.state_dict())
    for k, v in opt.state[p].items():
        if torch.is_tensor(v):
            assert opt_cpu.state[q][k].device.type == "cpu" and torch.equal(opt_cpu.state[q][k], v.cpu())
    # from the same state, the next step of the CPU library and of the GPU give the same bits
    grad = torch.randn(128, 128, dtype=torch.float16)
    p.grad, q.grad = grad.cuda(), grad
    opt.step()
    opt_cpu.step()
    assert torch.equal(p.detach().cpu().view(torch.int16), q.detach().view(torch.int16))
    assert all(torch.equal(opt.state[p][k].cpu(), v) for k, v in opt_cpu.state[q].items() if torch.is_tensor(v))
