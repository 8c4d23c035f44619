"""Block-wise 8-bit quantization of optimizer states (dynamic maps, quantize /
dequantize, the ``quantize_moments`` wrapper).
"""

from optx._src.quantization import (
    QuantizedArray,
    QuantizedState,
    StateScales,
    dequantize_blockwise,
    dynamic_map,
    quantize_blockwise,
    quantize_moments,
)

__all__ = [
    "QuantizedArray",
    "QuantizedState",
    "StateScales",
    "dequantize_blockwise",
    "dynamic_map",
    "quantize_blockwise",
    "quantize_moments",
]
