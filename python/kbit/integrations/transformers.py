"""kbit as a transformers quantization method: `from_pretrained(path, quantization_config=KbitConfig(load_in_4bit=True))`.

This module owns KbitConfig (BitsAndBytesConfig's field names and meanings), KbitHfQuantizer (the HfQuantizer that
swaps nn.Linear for kbit.nn.Linear4bit, or Linear8bitLt with load_in_8bit, on the meta device and fills each layer
as its weight is read), the load operations (quantize a float weight as it loads; rebuild a pre-quantized one from
its saved items), and `pretrained_config`, which lets a checkpoint pre-quantized by bitsandbytes load into kbit
layers. Importing it registers the method "kbit" through transformers' own `register_quantization_config` /
`register_quantizer`.

Checkpoints: `save_pretrained` writes each layer in bitsandbytes' keys (Linear4bit: weight = packed bytes,
weight.absmax, weight.quant_map, weight.nested_*, weight.quant_state.bitsandbytes__<type>; Linear8bitLt: weight =
int8 codes, SCB, weight_format) and config.json's quantization_config as `{"quant_method": "kbit", "bits": 4 (or
8), ...}`. "bits" stands for load_in_4bit / load_in_8bit there, because transformers sends every
quantization_config holding a true `load_in_4bit` or `load_in_8bit` to bitsandbytes, whatever its quant_method
says. The layers themselves and their numerics are kbit.nn's; PEFT is kbit.integrations.peft's.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoConfig
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer, get_module_from_name, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.quantizers_utils import should_convert_module
from transformers.utils.quantization_config import QuantizationConfigMixin

from kbit import _errors
from kbit.functional import int8_vectorwise_dequant, int8_vectorwise_quant, quantize_4bit
from kbit.nn import Linear4bit, Linear8bitLt

__all__ = ["KbitConfig", "KbitHfQuantizer", "QUANT_METHOD", "pretrained_config"]

QUANT_METHOD = "kbit"
_QUANT_TYPES = ("fp4", "nf4")
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# the items of one 4-bit weight in a checkpoint (kbit's and bitsandbytes' alike)
_SERIALIZED_4BIT = ["weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
                    "weight.quant_state.bitsandbytes__nf4", "weight.quant_state.bitsandbytes__fp4"]
_SERIALIZED_8BIT = ["weight", "SCB", "weight_format"]  # Linear8bitLt's (and bitsandbytes') keys


def _dtype(name: str, value: Any, allowed: tuple[torch.dtype, ...], default: torch.dtype) -> torch.dtype:
    if value is None:
        return default
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if dtype not in allowed:
        raise _errors.KbitValueError(f"{name}={value!r}; use one of {', '.join(str(d).removeprefix('torch.') for d in allowed)}")
    return dtype


class KbitConfig(QuantizationConfigMixin):
    """The quantization_config of kbit's method, with BitsAndBytesConfig's field names, defaults and meanings.

    load_in_4bit: replace every nn.Linear (but llm_int8_skip_modules, the output embedding, tied weights and the
    model's _keep_in_fp32_modules) by kbit.nn.Linear4bit. bnb_4bit_quant_type: "fp4" (default, as bitsandbytes) or
    "nf4". bnb_4bit_compute_dtype: the dtype of the product (None: float32, as bitsandbytes). bnb_4bit_use_double_quant:
    8-bit quantize the absmax too. bnb_4bit_quant_storage: uint8 only (kbit's Linear4bit keeps packed bytes).
    load_in_8bit: kbit.nn.Linear8bitLt instead (LLM.int8(): row-wise int8 weights), with llm_int8_threshold the
    outlier threshold of its inputs (6.0; 0 turns the outlier path off). llm_int8_skip_modules: module names
    (prefixes, suffixes or patterns) left unquantized, for either method.
    """

    def __init__(self, load_in_4bit: bool = False, load_in_8bit: bool = False, llm_int8_threshold: float = 6.0,
                 llm_int8_skip_modules: list[str] | None = None, bnb_4bit_compute_dtype=None,
                 bnb_4bit_quant_type: str = "fp4", bnb_4bit_use_double_quant: bool = False,
                 bnb_4bit_quant_storage=None, **kwargs):
        self.quant_method = QUANT_METHOD
        unknown = sorted(set(kwargs) - {"quant_method"})
        if unknown:
            raise _errors.KbitValueError(f"KbitConfig has no field {', '.join(unknown)}; its fields are load_in_4bit, "
                                         f"bnb_4bit_quant_type, bnb_4bit_compute_dtype, bnb_4bit_use_double_quant, "
                                         f"bnb_4bit_quant_storage, load_in_8bit, llm_int8_threshold and "
                                         f"llm_int8_skip_modules")
        if kwargs.get("quant_method", QUANT_METHOD) != QUANT_METHOD:
            raise _errors.KbitValueError(f"quant_method={kwargs['quant_method']!r} in a KbitConfig", fix="for a "
                                         "bitsandbytes checkpoint use KbitConfig.from_bitsandbytes(its config)")
        if bool(load_in_4bit) == bool(load_in_8bit):
            raise _errors.KbitValueError(f"KbitConfig needs exactly one of load_in_4bit=True or load_in_8bit=True "
                                         f"(got load_in_4bit={load_in_4bit!r}, load_in_8bit={load_in_8bit!r})",
                                         fix="KbitConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')")
        if bnb_4bit_quant_type not in _QUANT_TYPES:
            raise _errors.KbitValueError(f"bnb_4bit_quant_type={bnb_4bit_quant_type!r}; use 'nf4' or 'fp4'")
        if isinstance(llm_int8_threshold, bool) or not isinstance(llm_int8_threshold, (int, float)) or not (
                llm_int8_threshold >= 0):
            raise _errors.KbitValueError(f"llm_int8_threshold={llm_int8_threshold!r} must be a number >= 0 (6.0 for "
                                         f"LLM.int8, 0 for no outlier columns)")
        if llm_int8_skip_modules is not None and (isinstance(llm_int8_skip_modules, str) or not all(
                isinstance(m, str) for m in llm_int8_skip_modules)):
            raise _errors.KbitValueError(f"llm_int8_skip_modules must be a list of module names, got "
                                         f"{llm_int8_skip_modules!r}")
        self.load_in_4bit, self.load_in_8bit = bool(load_in_4bit), bool(load_in_8bit)
        self.llm_int8_threshold = float(llm_int8_threshold)
        self.llm_int8_skip_modules = None if llm_int8_skip_modules is None else list(llm_int8_skip_modules)
        self.bnb_4bit_compute_dtype = _dtype("bnb_4bit_compute_dtype", bnb_4bit_compute_dtype, _COMPUTE_DTYPES,
                                             torch.float32)
        self.bnb_4bit_quant_type = bnb_4bit_quant_type
        self.bnb_4bit_use_double_quant = bool(bnb_4bit_use_double_quant)
        self.bnb_4bit_quant_storage = _dtype("bnb_4bit_quant_storage", bnb_4bit_quant_storage, (torch.uint8,),
                                             torch.uint8)

    @property
    def bits(self) -> int:
        return 4 if self.load_in_4bit else 8

    # ------------------------------------------------------------------------------------ (de)serialization

    def to_dict(self) -> dict[str, Any]:
        """config.json's form: no load_in_4bit / load_in_8bit key (transformers would send it to bitsandbytes),
        "bits": 4 or 8 instead."""
        return {"quant_method": QUANT_METHOD, "bits": self.bits, "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
                "bnb_4bit_compute_dtype": str(self.bnb_4bit_compute_dtype).removeprefix("torch."),
                "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
                "bnb_4bit_quant_storage": str(self.bnb_4bit_quant_storage).removeprefix("torch."),
                "llm_int8_threshold": self.llm_int8_threshold,
                "llm_int8_skip_modules": copy.deepcopy(self.llm_int8_skip_modules)}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
        items = dict(config_dict)
        bits = items.pop("bits", None)
        if bits is not None:
            if bits not in (4, 8):
                raise _errors.KbitValueError(f"quantization_config has bits={bits!r}; kbit checkpoints have 4 or 8")
            items["load_in_4bit" if bits == 4 else "load_in_8bit"] = True
        return super().from_dict(items, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_bitsandbytes(cls, bnb_config) -> KbitConfig:
        """The KbitConfig meaning what a BitsAndBytesConfig (or its dict, as in a checkpoint's config.json) means."""
        items = bnb_config.to_dict() if hasattr(bnb_config, "to_dict") else dict(bnb_config)
        if items.get("quant_method", "bitsandbytes") != "bitsandbytes":
            raise _errors.KbitValueError(f"quant_method={items.get('quant_method')!r}: not a bitsandbytes config")
        eight = bool(items.get("load_in_8bit") or items.get("_load_in_8bit"))
        four = bool(items.get("load_in_4bit") or items.get("_load_in_4bit"))
        if items.get("llm_int8_has_fp16_weight"):
            raise _errors.KbitValueError("llm_int8_has_fp16_weight=True (float weights re-quantized at every "
                                         "forward) is not a checkpoint kbit's quantizer loads")
        return cls(load_in_4bit=four, load_in_8bit=eight, **{k: items[k] for k in (
            "bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage",
            "llm_int8_skip_modules", "llm_int8_threshold") if k in items})


def pretrained_config(path, **kwargs):
    """AutoConfig.from_pretrained(path, **kwargs) with a bitsandbytes quantization_config replaced by kbit's.

    bitsandbytes' 4-bit and 8-bit checkpoints hold exactly the items kbit's Linear4bit / Linear8bitLt load, so the
    weights need no
    conversion; only the config must name kbit, since transformers gives a checkpoint to the method its
    config.json names. `from_pretrained(path, config=pretrained_config(path))` loads it into kbit layers.
    A config that already names kbit (or no method) is returned as loaded.
    """
    config = AutoConfig.from_pretrained(path, **kwargs)
    qc = getattr(config, "quantization_config", None)
    if qc is not None:
        items = qc if isinstance(qc, dict) else qc.to_dict()
        if items.get("quant_method") == "bitsandbytes" or (items.get("quant_method") is None and (
                items.get("load_in_4bit") or items.get("load_in_8bit"))):
            config.quantization_config = KbitConfig.from_bitsandbytes(items).to_dict()
    return config


# ---------------------------------------------------------------------------------------- load operations

def _state_items(prefix: str, packed: torch.Tensor, state) -> dict[str, torch.Tensor]:
    items = {prefix + "weight": packed}
    items.update({prefix + "weight." + k: v for k, v in state.as_dict(packed=True).items()})
    return items


def _quantize_into(module: torch.nn.Module, weight: torch.Tensor) -> None:
    """Quantize a float weight into the (meta-built) kbit layer made for it, through the layer's load_state_dict."""
    if isinstance(module, Linear4bit):
        packed, state = quantize_4bit(weight, module.blocksize, module.quant_type, module.compress_statistics)
        module.load_state_dict(_state_items("", packed, state), strict=False)
    else:
        codes, row_stats, _ = int8_vectorwise_quant(weight)
        module.load_state_dict({"weight": codes, "SCB": row_stats}, strict=False, assign=True)


class KbitQuantize(ConversionOps):
    """Quantize one float weight the moment it is read, into the kbit layer built for it (the float copy is freed
    before the next weight is read: transformers loads one tensor at a time when a quantizer works on the fly)."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        result = {}
        for param_name, value in input_dict.items():
            value = value[0] if isinstance(value, list) else value
            module, _ = get_module_from_name(model, param_name)
            _quantize_into(module, value)
            del value
            module._is_hf_initialized = True
            result[param_name] = module.weight
        return result


class _SavedAsIs(ConversionOps):
    """The reverse of KbitDeserialize for save_pretrained: a kbit layer's state_dict already is the checkpoint form."""

    def convert(self, input_dict, **kwargs):
        return input_dict


class KbitDeserialize(ConversionOps):
    """Load a pre-quantized weight (kbit's or bitsandbytes' items) into its Linear4bit / Linear8bitLt, as saved."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    @property
    def reverse_op(self) -> ConversionOps:
        return _SavedAsIs()

    def convert(self, input_dict, model=None, full_layer_name=None, **kwargs):
        items = {k: (v[0] if isinstance(v, list) else v) for k, v in input_dict.items()}
        module, _ = get_module_from_name(model, full_layer_name)
        if not isinstance(module, (Linear4bit, Linear8bitLt)):
            return items  # a layer left in float (lm_head, skipped modules): its plain weight
        if len(items) == 1:
            what = ("absmax / .quant_map / .quant_state.bitsandbytes__<type>" if isinstance(module, Linear4bit) else
                    "SCB (its row statistics)")
            raise _errors.KbitValueError(
                f"{full_layer_name} is a {type(module).__name__} but the checkpoint holds only its quantized codes, "
                f"not {full_layer_name.removesuffix('weight')}{what}", fix="load a checkpoint written by "
                "save_pretrained of a kbit (or bitsandbytes) quantized model")
        module.load_state_dict(items, strict=False, assign=isinstance(module, Linear8bitLt))
        module._is_hf_initialized = True
        return {"weight": module.weight}


# ---------------------------------------------------------------------------------------- the quantizer

class KbitHfQuantizer(HfQuantizer):
    """transformers' HfQuantizer for KbitConfig: nn.Linear -> kbit.nn.Linear4bit (or Linear8bitLt), quantized on
    load or loaded pre-quantized; serializable and trainable (LoRA through kbit.integrations.peft)."""

    requires_calibration = False
    quantization_config: KbitConfig

    @property
    def serialized_names(self) -> dict[str, list[str]]:
        return {"weight": _SERIALIZED_4BIT if self.quantization_config.load_in_4bit else _SERIALIZED_8BIT}

    @property
    def _layer_type(self) -> type:
        return Linear4bit if self.quantization_config.load_in_4bit else Linear8bitLt

    @property
    def quantized_element_size(self) -> float:
        return 0.5 if self.quantization_config.load_in_4bit else 1.0

    def validate_environment(self, *args, **kwargs):
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise _errors.KbitValueError(f"device_map puts modules on disk ({device_map}); kbit's quantized layers "
                                         f"are served on CPU or CUDA tensors only", fix="use a device_map of 'cpu' and "
                                         "'cuda:N' entries")

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module, name = get_module_from_name(model, param_name)
        return isinstance(module, self._layer_type) and name == "weight"

    def _process_model_before_weight_loading(self, model, device_map=None, **kwargs):
        self.modules_to_not_convert = self.get_modules_to_not_convert(
            model, self.quantization_config.llm_int8_skip_modules, model._keep_in_fp32_modules)
        config = self.quantization_config
        replaced = 0
        for name, module in list(model.named_modules()):
            if type(module) is not torch.nn.Linear or not should_convert_module(name, self.modules_to_not_convert):
                continue
            if config.load_in_4bit:
                layer = Linear4bit(module.in_features, module.out_features, module.bias is not None,
                                   compute_dtype=config.bnb_4bit_compute_dtype, quant_type=config.bnb_4bit_quant_type,
                                   compress_statistics=config.bnb_4bit_use_double_quant, device="meta")
            else:
                layer = Linear8bitLt(module.in_features, module.out_features, module.bias is not None,
                                     has_fp16_weights=False, threshold=config.llm_int8_threshold, device="meta")
            layer.requires_grad_(False)
            model.set_submodule(name, layer)
            replaced += 1
        if replaced == 0:
            raise _errors.KbitValueError(f"{type(model).__name__} has no nn.Linear to quantize (skipped: "
                                         f"{sorted(self.modules_to_not_convert)})")

    def _process_model_after_weight_loading(self, model, **kwargs):
        # what PEFT and Trainer look at to treat the model as k-bit
        setattr(model, "is_loaded_in_4bit" if self.quantization_config.load_in_4bit else "is_loaded_in_8bit", True)
        return model

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    def get_quantize_ops(self):
        return KbitQuantize(self)

    def get_load_operations(self):
        return {"deserialize": KbitDeserialize}

    def _dequantize(self, model, dtype=None):
        from kbit.functional import dequantize_4bit

        for name, module in list(model.named_modules()):
            if isinstance(module, Linear4bit):
                weight = dequantize_4bit(module.weight, module.quant_state)
            elif isinstance(module, Linear8bitLt) and module.is_quantized:
                weight = int8_vectorwise_dequant(module.weight, module.SCB)
            else:
                continue
            linear = torch.nn.Linear(module.in_features, module.out_features, module.bias is not None,
                                     device=weight.device, dtype=dtype or weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
        return model


def _register() -> None:
    """Register "kbit" once with transformers' public registries (a re-import finds it registered already)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not KbitConfig:
        register_quantization_config(QUANT_METHOD)(KbitConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not KbitHfQuantizer:
        register_quantizer(QUANT_METHOD)(KbitHfQuantizer)


_register()
