"""kbit with PEFT: kbit.nn.Linear4bit and Linear8bitLt as LoRA targets, QLoRA's training preparation, merging.

This module owns LoraLinear4bit and LoraLinear8bitLt (LoRA layers over a frozen kbit layer, following PEFT's
conventions for LoRA layers), their registration through PEFT's own extension point for custom layers (LoraConfig's
_register_custom_module, which PEFT's dynamic dispatch consults before its built-in layers), and
prepare_for_kbit_training. PEFT does not save the registration in adapter_config.json, so a config loaded from
disk is registered again (`register(LoraConfig.from_pretrained(path))`) before PeftModel.from_pretrained.

Merging (merge / merge_and_unload) dequantizes the 4-bit weight, adds the adapter's B @ A * scaling in float32 and
quantizes the sum again with the layer's own settings. The merged layer is a Linear4bit, so the merge adds the
4-bit rounding of the sum: each element w of the merged weight W' = dequant(W) + dW comes back as q with
    |q - w| <= h * a~ + max(0, a - a~) + 2**-8 * (a + a~)
where a = max |W'| over w's block, a~ the absmax the new state stores for that block (a itself without double
quantization, its 8-bit code with it), h half the widest gap between neighbouring codes of the 4-bit table
(NF4: 0.15190, between -1 and -0.69619; FP4: 0.16667), and 2**-8 * (a + a~) covers the rounding of W' and of q
to a 16-bit weight dtype (bf16: 2**-9 relative each).
For Linear8bitLt (row-wise int8, s = max |W'| over w's row, stored as SCB): |q - w| <= s / 254 (half a code
step), plus float32 rounding. Unmerging subtracts dW from the requantized weight and quantizes again: it does not
give the original codes back.
"""
from __future__ import annotations

import warnings

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge

from kbit import _errors
from kbit.functional import (
    dequantize_4bit,
    get_4bit_type,
    int8_vectorwise_dequant,
    int8_vectorwise_quant,
    quantize_4bit,
)
from kbit.nn import Linear4bit, Linear8bitLt

__all__ = ["LoraLinear4bit", "LoraLinear8bitLt", "register", "lora_config", "prepare_for_kbit_training",
           "merge_error_bound_h"]


def merge_error_bound_h(quant_type: str) -> float:
    """h of the merge bound (module docstring): half the widest gap between neighbouring values of the 4-bit table."""
    table = get_4bit_type(quant_type).sort().values
    return float((table[1:] - table[:-1]).max()) / 2


class _KbitLora(torch.nn.Module, LoraLayer):
    """LoRA over a frozen kbit layer: y = base(x) + B(A(dropout(x))) * scaling. Subclasses say how the base weight
    is read as float32 (_dequantized) and stored again (_store).

    Plain LoRA only (no DoRA, aLoRA, Arrow or VeLoRA variants, no per-sample adapter_names): anything else is
    refused when the adapter is added. The adapter weights keep their own dtype (float32 by default); the input is
    cast to it and the adapter's output back to the base layer's output dtype.
    """

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module):
        return module.in_features, module.out_features

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs):
        used = [name for name, on in (("use_dora", config.use_dora),
                                      ("alora_invocation_tokens", config.alora_invocation_tokens is not None),
                                      ("arrow_config", config.arrow_config is not None),
                                      ("velora_config", getattr(config, "velora_config", None) is not None)) if on]
        if used:
            raise _errors.KbitValueError(f"kbit's LoRA layers support plain LoRA only; this LoraConfig sets "
                                         f"{', '.join(used)}", fix=f"leave {', '.join(used)} unset")
        return None

    # ------------------------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise _errors.KbitValueError("adapter_names (a different adapter per sample) is not supported on kbit's "
                                         "LoRA layers", fix="set the adapter with model.set_adapter(name)")
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            result = result + (lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]).to(result.dtype)
        return result

    # ------------------------------------------------------------------------------------ merging

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return (self.lora_B[adapter].weight.float() @ self.lora_A[adapter].weight.float()) * self.scaling[adapter]

    def _dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def _store(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _adjusted(self, adapter: str, sign: float, safe_merge: bool) -> None:
        base = self.get_base_layer()
        weight = self._dequantized() + sign * self.get_delta_weight(adapter)
        bias = None
        if self.lora_bias.get(adapter) and base.bias is not None:
            bias = (base.bias.detach().float() + sign * self.lora_B[adapter].bias.detach().float()).to(base.bias.dtype)
        if safe_merge and not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
            raise _errors.KbitValueError(f"merging adapter {adapter!r} gives non-finite weights; the adapter is "
                                         f"broken (NaN or inf in lora_A / lora_B)")
        items = self._store(weight)  # quantized with the base layer's own settings
        if bias is not None:
            items["bias"] = bias
        base.load_state_dict(items, strict=False)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters into the quantized weight (dequantize, add, requantize; the bounds are the module's)."""
        for name in check_adapters_to_merge(self, adapter_names):
            if name in self.lora_A:
                self._adjusted(name, 1.0, safe_merge)
                self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("this kbit LoRA layer has no merged adapter; nothing to unmerge", stacklevel=2)
            return
        warnings.warn("unmerging from a quantized weight requantizes it: the codes differ from those before the merge "
                      "(within the bound of kbit.integrations.peft's docstring)", _errors.KbitWarning, stacklevel=2)
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.lora_A:
                self._adjusted(name, -1.0, safe_merge=False)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


class LoraLinear4bit(_KbitLora):
    """LoRA over a kbit.nn.Linear4bit (the 4-bit weight frozen; merging requantizes it, see the module docstring)."""

    def _dequantized(self) -> torch.Tensor:
        base = self.get_base_layer()
        return dequantize_4bit(base.weight, base.quant_state).float()

    def _store(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        base = self.get_base_layer()
        packed, state = quantize_4bit(weight.to(base.quant_state.dtype), base.blocksize, base.quant_type,
                                      base.compress_statistics)
        return {"weight": packed, **{"weight." + k: v for k, v in state.as_dict(packed=True).items()}}


class LoraLinear8bitLt(_KbitLora):
    """LoRA over a kbit.nn.Linear8bitLt holding int8 weights (has_fp16_weights=False, the load_in_8bit form)."""

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: int = 1, **kwargs) -> None:
        layer = base_layer.get_base_layer() if hasattr(base_layer, "get_base_layer") else base_layer
        if layer.has_fp16_weights:
            raise _errors.KbitValueError("LoRA targets a Linear8bitLt with has_fp16_weights=True, whose float weight "
                                         "is itself trainable", fix="use int8 weights (has_fp16_weights=False, what "
                                         "KbitConfig(load_in_8bit=True) builds) or a plain nn.Linear")
        super().__init__(base_layer, adapter_name, config, r, lora_alpha, **kwargs)

    def _dequantized(self) -> torch.Tensor:
        base = self.get_base_layer().quantize_()
        return int8_vectorwise_dequant(base.weight, base.SCB).float()

    def _store(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, row_stats, _ = int8_vectorwise_quant(weight)
        return {"weight": codes, "SCB": row_stats}


def register(config: LoraConfig) -> LoraConfig:
    """Register kbit's LoRA layers for kbit.nn.Linear4bit and Linear8bitLt on `config` (PEFT's custom-module
    mapping, consulted before PEFT's own layers); returns it."""
    if not isinstance(config, LoraConfig):
        raise _errors.KbitValueError(f"register needs a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module({Linear4bit: LoraLinear4bit, Linear8bitLt: LoraLinear8bitLt})
    return config


def lora_config(**kwargs) -> LoraConfig:
    """LoraConfig(**kwargs) with kbit's quantized layers registered, ready for peft.get_peft_model."""
    return register(LoraConfig(**kwargs))


def prepare_for_kbit_training(model: torch.nn.Module, use_gradient_checkpointing: bool = True,
                              gradient_checkpointing_kwargs: dict | None = None, upcast_norms: bool = False):
    """What peft.prepare_model_for_kbit_training does, without casting every 16-bit parameter to float32.

    Freezes every parameter; with use_gradient_checkpointing, makes the input embeddings' output require grad
    (so checkpointed blocks see a differentiable input while the base model stays frozen) and turns on the
    model's gradient checkpointing (non-reentrant unless gradient_checkpointing_kwargs says otherwise).
    PEFT's function also casts the embeddings, the lm_head and the norms to float32, which for a 4-bit model can
    take more memory than the 4-bit layers themselves; here only upcast_norms=True casts the normalization
    weights (a few KB), and everything else keeps its dtype.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if upcast_norms:
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.to(torch.float32)
    if use_gradient_checkpointing:
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"]:
            model.enable_input_require_grads()
        if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x on
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
