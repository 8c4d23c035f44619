"""Learning-rate and threshold schedules (REX, quick recovery, SoRA sparsifying)."""

from optx._src.adapters import (
    sparsifying_schedule,
)
from optx._src.refactorization import (
    quick_recovery_schedule,
)
from optx._src.schedules import (
    rex_schedule,
    warmup_rex_schedule,
)

__all__ = [
    "quick_recovery_schedule",
    "rex_schedule",
    "sparsifying_schedule",
    "warmup_rex_schedule",
]
