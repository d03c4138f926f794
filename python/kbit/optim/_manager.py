"""GlobalOptimManager: per-parameter overrides of optimizer settings (bitsandbytes' GlobalOptimManager), e.g.
one embedding's state kept 32-bit while the rest of the model trains with 8-bit state.

This module owns the override registry and the lookup of one parameter's overrides. It is a process-wide
singleton (get_instance()), as bitsandbytes', so layers such as kbit.nn.StableEmbedding can register their
override when they are built, before any optimizer exists. Overrides are looked up at every step, so they may be
registered before or after the optimizer is created; a setting that shapes the state (optim_bits,
min_8bit_size) takes effect when a parameter's state is created, i.e. before its first step.

Lookup order for a parameter p at position (group_index, param_index) of an optimizer: module overrides
(register_module_override: the parameter currently at module.<name>), then overrides registered for p
itself (override_config), then for its position (register_parameters recorded p's position; bitsandbytes'
way of following a parameter that was replaced, e.g. by moving it to another device). Later entries win.
"""
from __future__ import annotations

import torch

from kbit import _errors

__all__ = ["GlobalOptimManager", "OVERRIDABLE"]

# the settings an override may change; anything else is refused (it would be silently ignored otherwise)
OVERRIDABLE = frozenset({"optim_bits", "min_8bit_size", "lr", "betas", "eps", "weight_decay", "alpha", "max_unorm",
                         "percentile_clipping", "t_alpha", "t_beta3"})


class GlobalOptimManager:
    """The registry of per-parameter optimizer overrides. Use GlobalOptimManager.get_instance()."""

    _instance: GlobalOptimManager | None = None

    def __init__(self):
        raise RuntimeError("GlobalOptimManager is a singleton: call GlobalOptimManager.get_instance()")

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def initialize(self) -> None:
        """Forget every override (as bitsandbytes' initialize)."""
        self.pid2config: dict[int, dict] = {}
        self.index2config: dict[tuple[int, int], dict] = {}
        self.module_weight_config_triple: list[tuple[torch.nn.Module, str, dict]] = []
        self._registered: dict[tuple[int, int], int] = {}

    def register_parameters(self, params) -> None:
        """Record the positions (group index, parameter index) of `params` as an optimizer will see them, so that
        overrides of these parameters follow their position if the tensors are later replaced."""
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for gi, group in enumerate(groups):
            for pi, p in enumerate(group["params"]):
                self._registered[(gi, pi)] = id(p)
                if id(p) in self.pid2config:
                    self.index2config[(gi, pi)] = self.pid2config[id(p)]

    def override_config(self, parameters, key: str | None = None, value=None, key_value_dict: dict | None = None
                        ) -> None:
        """Override settings for one parameter or a list of them: override_config(p, "optim_bits", 32) or
        override_config([p, q], key_value_dict={"lr": 1e-4, "optim_bits": 32})."""
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        if key is not None:
            if key_value_dict is not None:
                raise _errors.KbitValueError("pass either key and value or key_value_dict, not both")
            key_value_dict = {key: value}
        settings = _checked(key_value_dict)
        for p in parameters:
            if not isinstance(p, torch.Tensor):
                raise _errors.KbitValueError(f"override_config takes parameters (tensors), got {type(p).__name__}")
            self.pid2config.setdefault(id(p), {}).update(settings)
            for index, pid in self._registered.items():
                if pid == id(p):
                    self.index2config[index] = self.pid2config[id(p)]

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict) -> None:
        """Override settings for whatever parameter `module.<param_name>` is when an optimizer steps it."""
        if not isinstance(module, torch.nn.Module) or not isinstance(param_name, str):
            raise _errors.KbitValueError("register_module_override takes a torch.nn.Module and a parameter name")
        self.module_weight_config_triple.append((module, param_name, _checked(config)))

    def overrides_for(self, p: torch.Tensor, index: tuple[int, int] | None = None) -> dict:
        """The merged overrides of parameter p (empty when there are none)."""
        merged: dict = {}
        for module, name, config in self.module_weight_config_triple:
            if getattr(module, name, None) is p:
                merged.update(config)
        if index is not None and index in self.index2config:
            merged.update(self.index2config[index])
        merged.update(self.pid2config.get(id(p), {}))
        return merged


def _checked(settings: object) -> dict:
    if not isinstance(settings, dict) or not settings:
        raise _errors.KbitValueError(f"an override needs key and value or a non-empty key_value_dict, got {settings!r}")
    unknown = sorted(set(settings) - OVERRIDABLE)
    if unknown:
        raise _errors.KbitValueError(f"cannot override {', '.join(unknown)}; overridable settings: "
                                     f"{', '.join(sorted(OVERRIDABLE))}")
    return dict(settings)
