"""Low-rank adapters: finding LoRA pairs, masks and filters, merging, the NNX adapter
modules (LoRA-SB, gated SoRA) and SoRA's gate helpers.
"""

from optx._src.adapters import (
    gate_threshold,
    sora_l1_penalty,
    sparsifying_thresholds,
)
from optx._src.lora import (
    LoRAPair,
    freeze_base,
    lora_delta,
    lora_filter,
    lora_labels,
    lora_mask,
    lora_pairs,
    lora_scale,
    merge_lora,
)

# The NNX adapter modules import flax.nnx; they load on first access.
_LAZY = (
    "GatedLoRA",
    "LoRAFrozen",
    "LoRAXS",
    "ScaledLoRA",
    "add_lora",
    "estimate_first_update",
    "lora_sb_factors",
    "lora_sb_init",
    "prune_sora",
)


def __getattr__(name: str):
    if name in _LAZY:
        from optx._src import adapter_modules

        return getattr(adapter_modules, name)
    raise AttributeError(f"module 'optx.lora' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    "GatedLoRA",
    "LoRAFrozen",
    "LoRAPair",
    "LoRAXS",
    "ScaledLoRA",
    "add_lora",
    "estimate_first_update",
    "freeze_base",
    "gate_threshold",
    "lora_delta",
    "lora_filter",
    "lora_labels",
    "lora_mask",
    "lora_pairs",
    "lora_sb_factors",
    "lora_sb_init",
    "lora_scale",
    "merge_lora",
    "prune_sora",
    "sora_l1_penalty",
    "sparsifying_thresholds",
]
