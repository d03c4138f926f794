"""kbit.nn: torch modules built on kbit's quantized formats (Linear4bit, Linear8bitLt)."""
from kbit.nn.linear4bit import Linear4bit
from kbit.nn.linear8bitlt import Linear8bitLt

__all__ = ["Linear4bit", "Linear8bitLt"]
