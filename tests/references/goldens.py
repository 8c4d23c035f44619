"""Replaying a golden trajectory of an official implementation through an optx transform.

The golden files (``tests/data/*.npz``) hold, per parameter ``n``, its initial value
``init/n``, the gradients the official code was fed ``grads/n`` (one per step) and the
parameters after each step ``params_after/n``, all in PyTorch layout; ``to_flax`` maps
them to the layout the optx transform sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def torch_to_flax(x: np.ndarray) -> np.ndarray:
    """PyTorch (out, in) / (out, in, kh, kw) -> Flax (in, out) / (kh, kw, in, out)."""
    if x.ndim == 2:
        return x.T
    if x.ndim == 4:
        return x.transpose(2, 3, 1, 0)
    return x


def replay(
    tx: optax.GradientTransformation,
    arrays: Mapping[str, np.ndarray],
    names: Sequence[str],
    steps: int,
    *,
    rtol: float,
    atol: float,
    label: str,
    prefix: str = "",
    to_flax: Callable[[np.ndarray], np.ndarray] = torch_to_flax,
) -> None:
    """Feeds the recorded gradients to ``jax.jit(tx.update)`` and checks the
    parameters against the recorded ones after every step."""
    params = {n: jnp.asarray(to_flax(arrays[f"{prefix}init/{n}"])) for n in names}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(steps):
        grads = {n: jnp.asarray(to_flax(arrays[f"{prefix}grads/{n}"][t])) for n in names}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for n in names:
            np.testing.assert_allclose(
                np.asarray(params[n]),
                to_flax(arrays[f"{prefix}params_after/{n}"][t]),
                rtol=rtol,
                atol=atol,
                err_msg=f"{label}: {n} after step {t + 1}",
            )
