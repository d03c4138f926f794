"""kbit.integrations: kbit inside other projects' frameworks, each in its own module, imported only on demand.

- kbit.integrations.transformers: KbitConfig, the quantization method "kbit" for from_pretrained / save_pretrained
  (registered with transformers' own register_quantization_config / register_quantizer when the module is imported).
- kbit.integrations.peft: kbit's Linear4bit as a LoRA target (PEFT's custom-module registration), the QLoRA
  training preparation, and merging an adapter into a 4-bit weight.

This package imports none of them (`import kbit` never imports transformers, peft or accelerate); they come with
`pip install kbit[hf]`.
"""
