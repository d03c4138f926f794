"""The optimizers and settings of issue 12: LARS and LAMB (32-bit and 8-bit, max_unorm trust ratio), AdEMAMix's
t_alpha / t_beta3 schedules, percentile clipping, GlobalOptimManager overrides and the embeddings that keep
32-bit state. References are plain torch (tests/ops/optim_reference.py); 8-bit forms are held to the published
8-bit-vs-32-bit figures; state_dict round trips continue bit-identically. bitsandbytes itself is compared in
tests/ops/test_bnb_interop.py.
"""
from __future__ import annotations

import io

import pytest
import torch

import kbit
from kbit import optim as O

import optim_reference as R


@pytest.fixture(autouse=True)
def fresh_manager():
    O.GlobalOptimManager.get_instance().initialize()
    yield
    O.GlobalOptimManager.get_instance().initialize()


def _grads(shape, steps, seed=0, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=g) * 0.1
    return start, [torch.randn(shape, generator=g) * scale for _ in range(steps)]


TRUST = {
    "lars": (R.MOMENTUM, O.LARS, dict(lr=0.1, momentum=0.9, weight_decay=1e-4, max_unorm=0.02), (0.9, 0.0), 0.0),
    "lamb": (R.ADAM, O.LAMB, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, max_unorm=1.0),
             (0.9, 0.999), 1e-8),
    "lamb_tight": (R.ADAM, O.LAMB, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, max_unorm=0.01),
                   (0.9, 0.999), 1e-8),
}


@pytest.mark.parametrize("name", list(TRUST))
def test_lars_and_lamb_32bit_match_the_reference_over_50_steps(name):
    kind, cls, kwargs, betas, eps = TRUST[name]
    start, grads = _grads((64, 70), 50)
    p = torch.nn.Parameter(start.clone())
    opt = cls([p], optim_bits=32, **kwargs)
    ref = R.TrustRatioReference(kind, p, kwargs["lr"], betas, eps, kwargs["weight_decay"], kwargs["max_unorm"])
    for g in grads:
        p.grad = g.clone()
        opt.step()
        ref.step(g)
    assert torch.allclose(p.detach().flatten(), ref.p, rtol=1e-5, atol=1e-6), (p.detach().flatten() - ref.p).abs().max()


def test_the_trust_ratio_actually_limits_the_step():
    start, grads = _grads((64, 70), 3, scale=10.0)
    free = torch.nn.Parameter(start.clone())
    bound = torch.nn.Parameter(start.clone())
    opt_free = O.Adam([free], lr=1e-2, weight_decay=0.0)
    opt_bound = O.LAMB([bound], lr=1e-2, max_unorm=0.01)
    free.grad, bound.grad = grads[0].clone(), grads[0].clone()
    opt_free.step()
    opt_bound.step()
    step_free, step_bound = (free - start).norm().item(), (bound - start).norm().item()
    assert step_bound < 0.5 * step_free
    # ||update|| of LAMB's step = lr * max_unorm * ||p|| when clipped
    assert abs(step_bound - 1e-2 * 0.01 * start.norm().item()) < 1e-3 * step_bound


def _published(cls8, cls32, kwargs, shape=(1024, 1024), steps=50):
    """bitsandbytes' protocol for 8-bit against 32-bit (test_optim.py's _published_errors): every step starts
    both from the same point with the 32-bit states set to the 8-bit ones dequantized; returns the worst step's
    mean abs and mean relative parameter error."""
    start, grads = _grads(shape, steps, seed=1)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    o8, o32 = cls8([a], **kwargs), cls32([b], **kwargs)
    worst = [0.0, 0.0]
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        o8.step()
        o32.step()
        err = (a - b).abs()
        worst = [max(worst[0], err.mean().item()), max(worst[1], (err / (b.abs() + 1e-9)).mean().item())]
        s8, s32 = o8.state[a], o32.state[b]
        with torch.no_grad():
            b.copy_(a)
            s32["state1"].copy_(R.dequantize(s8["state1"].flatten(), s8["absmax1"], R.SMAP).view_as(b))
            if "state2" in s32:
                s32["state2"].copy_(R.dequantize(s8["state2"].flatten(), s8["absmax2"], R.UMAP).view_as(b))
    return worst


@pytest.mark.parametrize("cls8,cls32,kwargs", [(O.LAMB8bit, O.LAMB32bit, dict(lr=1e-3, max_unorm=1.0)),
                                              (O.LARS8bit, O.LARS32bit, dict(lr=1e-2, momentum=0.9))],
                         ids=["lamb", "lars"])
def test_8bit_lars_and_lamb_meet_the_published_8bit_figures(cls8, cls32, kwargs):
    """published: bitsandbytes' 8-bit Adam figures (mean abs < 6e-5, mean relative < 6e-4 per step on 1024 x 1024)."""
    abs_err, rel_err = _published(cls8, cls32, kwargs)
    assert abs_err < 6e-5 and rel_err < 6e-4, (abs_err, rel_err)


def test_lars_requires_momentum_and_lamb_refuses_what_it_cannot_do():
    with pytest.raises(kbit.KbitValueError, match="momentum"):
        O.LARS([torch.nn.Parameter(torch.zeros(4))], lr=0.1)
    with pytest.raises(kbit.KbitValueError, match="adam_w_mode=False"):
        O.LAMB([torch.nn.Parameter(torch.zeros(4))], adam_w_mode=False)
    with pytest.raises(kbit.KbitValueError, match="max_unorm"):
        O.LAMB([torch.nn.Parameter(torch.zeros(4))], max_unorm=-1.0)


# ------------------------------------------------------------------------------------ AdEMAMix schedules

@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("t_alpha,t_beta3", [(20, None), (None, 30), (25, 40)])
def test_ademamix_schedules_match_the_reference_exactly(bits, t_alpha, t_beta3):
    start, grads = _grads((70, 90), 50)
    p = torch.nn.Parameter(start.clone())
    opt = O.AdEMAMix([p], lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha=t_alpha, t_beta3=t_beta3,
                     weight_decay=1e-2, optim_bits=bits)
    ref = R.Reference(R.ADEMAMIX, p, bits, 1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, 5.0)
    for step, g in enumerate(grads, start=1):
        alpha, b3 = R.ademamix_schedule(step, 5.0, 0.9, 0.9999, t_alpha, t_beta3)
        ref.h = (1e-3, 0.9, 0.999, b3, alpha, 1e-8, 1e-2)
        p.grad = g.clone()
        opt.step()
        ref.step(g)
    assert torch.equal(p.detach().flatten(), ref.p)


def test_ademamix_schedule_changes_the_result():
    start, grads = _grads((70, 90), 5)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    oa, ob = O.AdEMAMix([a]), O.AdEMAMix([b], t_alpha=100, t_beta3=100)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kw", [dict(t_alpha=0), dict(t_beta3=-3), dict(t_alpha=1.5)], ids=repr)
def test_bad_schedules_are_refused(kw):
    with pytest.raises(kbit.KbitValueError, match="step count"):
        O.AdEMAMix([torch.nn.Parameter(torch.zeros(4))], **kw)


# ------------------------------------------------------------------------------------ percentile clipping

def test_percentile_clipping_matches_the_definition_and_scales_the_gradient_exactly():
    start, grads = _grads((64, 80), 30)
    grads[20] = grads[20] * 100  # a spike the history clips
    p = torch.nn.Parameter(start.clone())
    opt = O.Adam([p], lr=1e-3, percentile_clipping=5)
    ref = R.Reference(R.ADAM, p, 32, 1e-3, (0.9, 0.999), 1e-8, 0.0)
    history = torch.zeros(100)
    scales = []
    for step, g in enumerate(grads, start=1):
        scale = R.clip_scale(g, history, step, 5)
        scales.append(scale)
        p.grad = g.clone()
        opt.step()
        ref.step(g * R.f32(scale))
    assert torch.equal(p.detach().flatten(), ref.p)
    assert torch.equal(opt.state[p]["gnorm_vec"], history) and min(scales) < 1.0


def test_percentile_clipping_function_returns_norm_clip_and_scale():
    vec = torch.zeros(100)
    vec[:10] = torch.arange(1.0, 11.0) ** 2
    g = torch.full((4,), 10.0)  # norm 20, squared 400
    current, clip, scale = O.percentile_clipping(g, vec, 15, percentile=95)
    assert current.item() == 20.0 and vec[15].item() == 400.0
    # sorted history: 89 zeros, then 1, 4, ..., 100 and 400; its 95th entry is 49: clip 7 < 20, scale 7 / 20
    assert clip.item() == 7.0 and scale == pytest.approx(0.35, rel=1e-7)

    with pytest.raises(kbit.KbitValueError, match="percentile"):
        O.percentile_clipping(g, vec, 1, percentile=100)
    with pytest.raises(kbit.KbitValueError, match="percentile_clipping"):
        O.Adam([torch.nn.Parameter(torch.zeros(4))], percentile_clipping=0)


# ------------------------------------------------------------------------------------ overrides

def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 128))


@pytest.mark.parametrize("when", ["before", "after"])
def test_override_keeps_one_parameter_32bit_registered_before_or_after_the_optimizer(when):
    model = _model()
    mng = O.GlobalOptimManager.get_instance()
    if when == "before":
        mng.register_parameters(model.parameters())
        mng.override_config(model[0].weight, "optim_bits", 32)
    opt = O.Adam8bit(model.parameters())
    if when == "after":
        mng.override_config(model[0].weight, "optim_bits", 32)
    model(torch.randn(4, 128)).sum().backward()
    opt.step()
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32
    assert opt.state[model[1].weight]["state1"].dtype == torch.uint8


def test_override_of_lr_is_the_same_as_a_separate_optimizer():
    start, grads = _grads((64, 80), 10)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    O.GlobalOptimManager.get_instance().override_config(a, key_value_dict={"lr": 5e-3, "betas": (0.8, 0.99)})
    oa, ob = O.AdamW8bit([a]), O.AdamW8bit([b], lr=5e-3, betas=(0.8, 0.99))
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.equal(a, b)


def test_overrides_follow_a_registered_position_when_the_tensor_is_replaced():
    model = _model()
    mng = O.GlobalOptimManager.get_instance()
    mng.register_parameters(model.parameters())
    mng.override_config(model[1].weight, "optim_bits", 32)
    replaced = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]  # e.g. moved to a device
    opt = O.Adam8bit(replaced)
    for p in replaced:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[replaced[2]]["state1"].dtype == torch.float32 and opt.state[replaced[0]]["state1"].dtype == torch.uint8


def test_bad_overrides_are_refused():
    mng = O.GlobalOptimManager.get_instance()
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(kbit.KbitValueError, match="cannot override momentum"):
        mng.override_config(p, "momentum", 0.5)
    with pytest.raises(RuntimeError, match="get_instance"):
        O.GlobalOptimManager()
    mng.override_config(p, "optim_bits", 16)
    p.grad = torch.zeros(4)
    with pytest.raises(kbit.KbitValueError, match="optim_bits=16"):
        O.Adam8bit([p]).step()


# ------------------------------------------------------------------------------------ embeddings

def test_stable_embedding_normalises_and_keeps_32bit_state():
    torch.manual_seed(0)
    emb = kbit.nn.StableEmbedding(300, 64)
    bound = (6 / (300 + 64)) ** 0.5  # xavier_uniform
    assert emb.weight.abs().max() <= bound and emb.weight.abs().max() > 0.9 * bound
    x = torch.tensor([[1, 5, 7]])
    out = emb(x)
    assert torch.allclose(out, torch.nn.functional.layer_norm(emb.weight[x], (64,), emb.norm.weight, emb.norm.bias))
    head = torch.nn.Linear(64, 4096)
    opt = O.Adam8bit(list(emb.parameters()) + list(head.parameters()))
    head(out).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    assert opt.state[head.weight]["state1"].dtype == torch.uint8
    assert set(emb.state_dict()) == {"weight", "norm.weight", "norm.bias"}


def test_embedding_keeps_32bit_state_and_half_precision_stable_embedding_returns_its_dtype():
    emb = kbit.nn.Embedding(200, 64, padding_idx=0)
    assert bool((emb.weight[0] == 0).all())
    opt = O.Adam8bit(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    assert opt.state[emb.weight]["state1"].dtype == torch.float32
    half = kbit.nn.StableEmbedding(10, 16, dtype=torch.float16)
    assert half(torch.tensor([3])).dtype == torch.float16


# ------------------------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("make", [lambda ps: O.LAMB8bit(ps, lr=1e-3), lambda ps: O.LARS8bit(ps, lr=1e-2, momentum=0.9),
                                  lambda ps: O.LAMB32bit(ps, lr=1e-3),
                                  lambda ps: O.AdEMAMix8bit(ps, t_alpha=8, t_beta3=8),
                                  lambda ps: O.Adam8bit(ps, percentile_clipping=10)],
                         ids=["lamb8", "lars8", "lamb32", "ademamix8-schedules", "adam8-clipping"])
def test_state_dict_round_trip_mid_training_continues_bit_identically(make):
    start, grads = _grads((70, 90), 10, seed=3)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_a, opt_b = make([a]), make([b])
    for g in grads[:5]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    buf.seek(0)
    opt_c = make([b])
    opt_c.load_state_dict(torch.load(buf, weights_only=False))
    for g in grads[5:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_c.step()
    assert torch.equal(a, b)
    assert all(torch.equal(v, opt_c.state[b][k]) for k, v in opt_a.state[a].items() if torch.is_tensor(v))


# ------------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("make", [lambda ps: O.LAMB8bit(ps, lr=1e-3), lambda ps: O.LARS32bit(ps, lr=1e-2, momentum=0.9),
                                  lambda ps: O.AdEMAMix8bit(ps, t_alpha=8, t_beta3=8),
                                  lambda ps: O.Adam8bit(ps, percentile_clipping=5)],
                         ids=["lamb8", "lars32", "ademamix8-schedules", "adam8-clipping"])
def test_cuda_follows_the_cpu(make):
    """The update kernels are bit-identical across devices (tests/ops/test_optim.py); the trust ratio and the
    clipping norms are torch reductions whose order differs by device, hence a tolerance."""
    start, grads = _grads((70, 90), 20, seed=4)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone().cuda())
    oa, ob = make([a]), make([b])
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone().cuda()
        oa.step()
        ob.step()
    assert torch.allclose(b.detach().cpu(), a.detach(), rtol=1e-4, atol=1e-6)
