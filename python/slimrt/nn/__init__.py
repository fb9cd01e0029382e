"""slimrt modules: drop-in replacements for nn.Linear that run slimrt ops."""

from slimrt.nn.int8_linear import Int8Linear

__all__ = ["Int8Linear"]
