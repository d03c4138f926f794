"""kbit.nn: torch modules built on kbit's quantized formats (Linear4bit)."""
from kbit.nn.linear4bit import Linear4bit

__all__ = ["Linear4bit"]
