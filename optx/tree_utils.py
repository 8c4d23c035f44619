"""Tree utilities: key-path strings, parameter counts and optimizer-state sizes."""

from optx._src.base import (
    path_to_str,
)
from optx._src.fisher import (
    mfac_state_bytes,
)
from optx._src.state_utils import (
    param_count,
    state_bytes,
    state_bytes_by_group,
    state_bytes_per_param,
)

__all__ = [
    "mfac_state_bytes",
    "param_count",
    "path_to_str",
    "state_bytes",
    "state_bytes_by_group",
    "state_bytes_per_param",
]
