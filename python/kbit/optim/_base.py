"""The common machinery of kbit's optimizers: a torch.optim.Optimizer whose step runs one fused native
update per parameter, with bitsandbytes-compatible state.

This module owns hyperparameter and tensor checks, state creation, moving state to the parameter's device,
and state_dict loading. The math is native (csrc/numerics/optim.h, via kbit.optim._update); the public
classes (kbit.optim.optimizers) only say which optimizer and which defaults.

State of a parameter (bitsandbytes' names and layout, so states interoperate):
  "step"              int, updates done so far
  32-bit form         "state1" (and "state2" for Adam/AdEMAMix), float32, the parameter's shape
  8-bit form          "state1"/"state2" uint8 codes of the parameter's shape, "absmax1"/"absmax2" float32
                      [ceil(n / 256)], "qmap1" the signed dynamic map, "qmap2" the unsigned one
  AdEMAMix            state1 has shape (2, *p.shape): the fast EMA, then the slow one; absmax1 is (2, blocks)
The 8-bit form is used when optim_bits == 8 and the parameter has at least min_8bit_size (default 4096)
elements; smaller parameters keep 32-bit state (bitsandbytes' min_8bit_size). States start at zero codes
with absmax 0 (bitsandbytes' zeros), which dequantize to zero.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch

from kbit import _errors
from kbit.functional import create_dynamic_map
from kbit.optim import _clipping, _paged, _update
from kbit.optim._manager import GlobalOptimManager

_SUPPORTED = tuple(_update.DTYPE_IDS)
_BNB_WRAPPER = "__bnb_optimizer_quant_state__"  # bitsandbytes 0.50's key for a parameter's 8-bit state


def check_hyper(name: str, value: object, *, low: float = 0.0, below_one: bool = False) -> None:
    """Refuse a hyperparameter outside [low, inf) (or [low, 1) for betas); NaN is refused too."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low \
        and (not below_one or value < 1.0) and math.isfinite(value)
    if not ok:
        bound = "[0, 1)" if below_one else f">= {low} and finite"
        raise _errors.KbitValueError(f"{name}={value!r} is invalid: it must be a number {bound}")


def check_betas(betas: object, count: int) -> tuple:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise _errors.KbitValueError(f"betas={betas!r} must be a tuple of {count} numbers in [0, 1)")
    for i, b in enumerate(betas):
        check_hyper(f"betas[{i}]", b, below_one=True)
    return tuple(float(b) for b in betas)


class KbitOptimizer(torch.optim.Optimizer):
    """Base of every kbit optimizer. Subclasses set `kind` and implement `hyper(group)`."""

    kind: int = _update.ADAM
    beta_count: int = 2

    def __init__(self, params, defaults: dict, *, optim_bits: int = 32, min_8bit_size: int = 4096,
                 is_paged: bool = False, percentile_clipping: int = 100, max_unorm: float = 0.0):
        if optim_bits not in (8, 32) or isinstance(optim_bits, bool):
            raise _errors.KbitValueError(f"optim_bits={optim_bits!r}; use 8 (blockwise 8-bit states) or 32")
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 0:
            raise _errors.KbitValueError(f"min_8bit_size={min_8bit_size!r} must be an int >= 0")
        defaults = {**defaults, "percentile_clipping": percentile_clipping, "max_unorm": max_unorm}
        self.check_group(defaults)
        super().__init__(params, defaults)
        self.optim_bits, self.min_8bit_size, self.is_paged = optim_bits, min_8bit_size, bool(is_paged)
        self._paging_warned = False
        for group in self.param_groups:
            self.check_group(group)
            for p in group["params"]:
                if p.requires_grad:  # a frozen weight of any dtype (kbit.nn.Linear4bit's uint8 codes) is fine
                    self._check_dtype(p)

    # ------------------------------------------------------------------ hooks for subclasses

    def hyper(self, group: dict) -> _update.Hyper:
        """The kernel's hyperparameters from a param group."""
        b1, b2 = group["betas"][0], group["betas"][1]
        return _update.Hyper(group["lr"], b1, b2, 0.0, 0.0, group["eps"], group["weight_decay"])

    def check_group(self, group: dict) -> None:
        """Refuse bad hyperparameters (bitsandbytes' checks: lr, eps, weight_decay >= 0; betas in [0, 1));
        max_unorm >= 0 and percentile_clipping an int in 1..100 where a group has them."""
        check_hyper("lr", group["lr"])
        check_hyper("eps", group["eps"])
        check_hyper("weight_decay", group["weight_decay"])
        check_betas(group["betas"], self.beta_count)
        check_hyper("max_unorm", group.get("max_unorm", 0.0))
        pc = group.get("percentile_clipping", 100)
        if isinstance(pc, bool) or not isinstance(pc, int) or not 1 <= pc <= 100:
            raise _errors.KbitValueError(f"percentile_clipping={pc!r} must be an int in 1..100 (100: off)")

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_dtype(p: torch.Tensor) -> None:
        if p.dtype not in _SUPPORTED:
            raise _errors.KbitValueError(
                f"a parameter with a gradient has dtype {p.dtype}; kbit optimizers update torch.float32, "
                f"torch.float16 and torch.bfloat16 parameters.", fix="freeze it (requires_grad=False) or keep it out "
                "of the optimizer's parameters")

    def _check_grad(self, p: torch.Tensor) -> torch.Tensor:
        g = p.grad
        if g.is_sparse:
            raise _errors.KbitValueError(
                "a parameter has a sparse gradient; kbit optimizers need dense gradients.", fix="use "
                "torch.optim.SparseAdam for sparse embeddings, or nn.Embedding(sparse=False)")
        self._check_dtype(p)
        if g.dtype != p.dtype or g.shape != p.shape or g.device != p.device:
            raise _errors.KbitValueError(
                f"a gradient is {g.dtype} {tuple(g.shape)} on {g.device} but its parameter is {p.dtype} "
                f"{tuple(p.shape)} on {p.device}; they must agree")
        return g.contiguous()

    # ------------------------------------------------------------------ state

    def _zeros(self, p: torch.Tensor, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        if self.is_paged and p.device.type == "cuda" and p.numel() >= _paged.MIN_PAGED_NUMEL:
            return _paged.managed_zeros(p, shape, dtype)
        return torch.zeros(shape, dtype=dtype, device=p.device)

    def _warn_paging_on_cpu(self, p: torch.Tensor) -> None:
        if self.is_paged and p.device.type == "cpu" and not self._paging_warned:
            self._paging_warned = True
            warnings.warn(f"{type(self).__name__}: paging has no effect on CPU parameters (paged states live in "
                          f"CUDA managed memory); this optimizer runs as the unpaged one", stacklevel=3)

    def init_state(self, p: torch.Tensor, state: dict, config: dict | None = None) -> None:
        """Zero states in the 8-bit form (optim_bits == 8 and numel >= min_8bit_size) or the 32-bit form; a
        GlobalOptimManager override in `config` may change optim_bits and min_8bit_size for this parameter."""
        config = config or {}
        optim_bits = config.get("optim_bits", self.optim_bits)
        min_8bit_size = config.get("min_8bit_size", self.min_8bit_size)
        if optim_bits not in (8, 32) or isinstance(optim_bits, bool):
            raise _errors.KbitValueError(f"an override sets optim_bits={optim_bits!r}; use 8 or 32")
        self._warn_paging_on_cpu(p)
        n = p.numel()
        two = _update.state_count(self.kind) >= 2
        copies = _update.state1_copies(self.kind)
        shape1 = (copies, *p.shape) if copies > 1 else tuple(p.shape)
        state["step"] = 0
        if optim_bits == 8 and n >= min_8bit_size:
            blocks = -(-n // _update.BLOCKSIZE)
            state["state1"] = self._zeros(p, shape1, torch.uint8)
            state["qmap1"] = create_dynamic_map(True).to(p.device)
            state["absmax1"] = torch.zeros((copies, blocks) if copies > 1 else (blocks,),
                                           dtype=torch.float32, device=p.device)
            if two:
                state["state2"] = self._zeros(p, tuple(p.shape), torch.uint8)
                state["qmap2"] = create_dynamic_map(False).to(p.device)
                state["absmax2"] = torch.zeros((blocks,), dtype=torch.float32, device=p.device)
        else:
            state["state1"] = self._zeros(p, shape1, torch.float32)
            if two:
                state["state2"] = self._zeros(p, tuple(p.shape), torch.float32)

    def check_state(self, p: torch.Tensor, state: dict) -> None:
        """Refuse a state that does not belong to p (e.g. a state_dict of another model) with the reason."""
        n = p.numel()
        two = _update.state_count(self.kind) >= 2
        n1 = _update.state1_copies(self.kind) * n
        names = ("state1", "state2") if two else ("state1",)
        problems = [f"'{k}' is missing" for k in ("step",) + names if k not in state]
        if "step" in state:
            problems += self._check_step(state)
        if "gnorm_vec" in state and (not torch.is_tensor(state["gnorm_vec"]) or state["gnorm_vec"].numel() != 100):
            problems.append("'gnorm_vec' must be 100 float32 values (percentile clipping's gradient-norm history)")
        if not problems:
            eight = state["state1"].dtype == torch.uint8
            expected = torch.uint8 if eight else torch.float32
            for k in names:
                want = n1 if k == "state1" else n
                if state[k].dtype != expected or state[k].numel() != want:
                    problems.append(f"'{k}' is {state[k].dtype} with {state[k].numel()} elements, expected "
                                    f"{expected} with {want}")
            if eight:
                problems += self._check_8bit_extras(state, n, two)
        if problems:
            raise _errors.KbitValueError(
                f"the optimizer state of a parameter of shape {tuple(p.shape)} does not fit {type(self).__name__}: "
                f"{'; '.join(problems)}.", fix="load a state_dict saved by the same optimizer class for the same model")

    @staticmethod
    def _check_step(state: dict) -> list[str]:
        """state["step"] as an int >= 0; a whole-valued float or 0-dim tensor (torch-style states) is converted."""
        step = state["step"]
        if torch.is_tensor(step) and step.numel() == 1 and not step.dtype.is_complex:
            step = step.item()
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return [f"'step' is {state['step']!r}, expected a whole number >= 0"]
        state["step"] = step
        return []

    def _check_8bit_extras(self, state: dict, n: int, two: bool) -> list[str]:
        blocks = -(-n // _update.BLOCKSIZE)
        problems = []
        checks = [("absmax1", blocks * _update.state1_copies(self.kind), "qmap1", True)]
        if two:
            checks.append(("absmax2", blocks, "qmap2", False))
        for absmax, count, qmap, signed in checks:
            a = state.get(absmax)
            if a is None or a.dtype != torch.float32 or a.numel() != count:
                problems.append(f"'{absmax}' must be {count} float32 values")
            q = state.get(qmap)
            if q is not None and not torch.equal(q.detach().cpu().float(), create_dynamic_map(signed)):
                problems.append(f"'{qmap}' is not the {'signed' if signed else 'unsigned'} dynamic map; kbit's "
                                f"kernels use that map only")
        return problems

    def _state_to_device(self, p: torch.Tensor, state: dict) -> None:
        """Move state to p's device, keeping dtypes (bitsandbytes moves state at its first step too), and make
        it dense: the kernels take raw pointers, so a strided view would be read as if it were contiguous."""
        for k, v in state.items():
            if torch.is_tensor(v) and (v.device != p.device or not v.is_contiguous()):
                state[k] = v.to(p.device).contiguous()

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()'s loss when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        manager = GlobalOptimManager.get_instance()
        for gi, group in enumerate(self.param_groups):
            self.check_group(group)
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                overrides = manager.overrides_for(p, (gi, pi))
                config = {**group, **overrides} if overrides else group
                if overrides:
                    self.check_group(config)
                self._step_param(p, config)
        return loss

    def schedule(self, h: _update.Hyper, config: dict, step: int) -> _update.Hyper:
        """The hyperparameters of step `step` (1-based) of one parameter; subclasses with schedules override it."""
        return h

    def _step_param(self, p: torch.Tensor, config: dict) -> None:
        g = self._check_grad(p)
        state = self.state[p]
        if not state:
            self.init_state(p, state, config)
        self.check_state(p, state)
        self._state_to_device(p, state)
        state["step"] += 1
        h = self.schedule(self.hyper(config), config, state["step"])
        gnorm_scale = _clipping.gnorm_scale(g, state, config.get("percentile_clipping", 100))
        max_unorm = config.get("max_unorm", 0.0)
        if max_unorm > 0.0:
            h = _clipping.trust_ratio_hyper(self.kind, p, g, state, h, gnorm_scale, max_unorm)
        target = p.data if p.data.is_contiguous() else p.data.contiguous()
        _update.update(self.kind, target, g, state, h, gnorm_scale)
        if target is not p.data:
            p.data.copy_(target)

    # ------------------------------------------------------------------ state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load_state_dict, except that state tensors keep their dtype exactly, and nothing is loaded
        unless every state fits its parameter.

        torch casts floating state to the parameter's dtype (a float16 parameter would get float16 absmax
        and 32-bit states); kbit's states are always float32 or uint8, so every state tensor is restored from
        the saved one, only moved to the parameter's device and made contiguous. bitsandbytes 0.50 keeps a
        parameter's 8-bit state under "__bnb_optimizer_quant_state__"; it is unwrapped, so its checkpoints load.
        """
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(saved_ids) != len(params):
            raise _errors.KbitValueError(
                f"the state_dict has {len(saved_ids)} parameters but this optimizer has {len(params)}.", fix="load "
                "a state_dict saved by the same optimizer for the same model")
        restored = {}
        for old_id, p in zip(saved_ids, params):
            if old_id in saved_state:
                restored[p] = self._restored(saved_state[old_id], p)
                self.check_state(p, restored[p])
        super().load_state_dict(state_dict)
        for p in params:
            self.state.pop(p, None)
        self.state.update(restored)

    @staticmethod
    def _restored(saved: dict, p: torch.Tensor) -> dict:
        entry = {k: v for k, v in saved.items() if k != _BNB_WRAPPER}
        entry.update(saved.get(_BNB_WRAPPER, {}))
        return {k: (v.detach().to(device=p.device, copy=True).contiguous() if torch.is_tensor(v) else copy.deepcopy(v))
                for k, v in entry.items()}
