"""Learning-rate schedules: REX and its warmup variant.

REX (Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an
Improved Schedule", MLSys 2022, arXiv 2107.04197, §3) decays slower than
linear early and faster late:

.. math::

  η(t) = η_{min} + (η_{max} - η_{min})\\,\\frac{1 - z}{1/2 + (1 - z)/2}
       = η_{min} + (η_{max} - η_{min})\\,\\frac{1 - z}{1 - z/2},
  \\qquad z = \\min(t / T, 1),

so ``η(0) = η_max``, ``η(T/2) = η_min + ⅔(η_max − η_min)``, ``η(T) = η_min``.

Offset quirk of pytorch-optimizer's ``REXScheduler`` (4.1.0, the golden
reference): torch's ``LRScheduler.__init__`` already steps once and the class
then sets the group's lr to ``min_lr``, so in the usual ``optimizer.step();
scheduler.step()`` loop the optimizer's step ``c`` (0-based) sees
``min_lr`` for ``c = 0`` and ``η(c)`` afterwards: ``η_max`` is never used. An
optax schedule is called with the number of updates already applied, so
``rex_schedule`` gives the paper's profile ``η(count)`` (``η_max`` on the
first update). To reproduce the torch loop exactly, use
``lambda c: jnp.where(c == 0, min_lr, rex(c))``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from optx._src import base


def rex_schedule(
    init_value: Any,
    decay_steps: int,
    end_value: float = 0.0,
) -> optax.Schedule:
    """The REX profile from ``init_value`` (η_max) to ``end_value`` (η_min).

    .. math::

      η(t) = η_{min} + (η_{max} - η_{min})\\,\\frac{1 - z}{1/2 + (1 - z)/2},
      \\qquad z = \\min(t/T, 1)

    ``schedule(count)`` is the rate of the step that sees ``count`` (optax's
    convention), so the first step uses η_max. A PyTorch loop with the
    reference ``REXScheduler`` (pytorch-optimizer) calls ``scheduler.step()``
    after ``optimizer.step()``: its first step runs at the optimizer's initial
    rate (the scheduler sets η_min there) and step ``c ≥ 1`` at ``η(c)``
    (tested on the golden profile):
    ``lambda c: jnp.where(c == 0, η_min, rex_schedule(η_max, T, η_min)(c))``
    reproduces that loop.

    Args:
      init_value: η_max, the value at ``count = 0``.
      decay_steps: T, the number of steps of the decay (static int > 0); the
        schedule stays at ``end_value`` afterwards.
      end_value: η_min (default 0).

    References:
      Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an
      Improved Schedule", MLSys 2022, arXiv 2107.04197 (§3).

    Example:
      >>> import optx
      >>> sched = optx.schedules.rex_schedule(1.0, decay_steps=100)
      >>> [round(float(sched(c)), 4) for c in (0, 50, 100, 200)]
      [1.0, 0.6667, 0.0, 0.0]
    """
    decay_steps = base.check_positive_int("decay_steps", decay_steps)
    base.check_finite("init_value", init_value)
    base.check_finite("end_value", end_value)

    def schedule(count: Any) -> Any:
        # (1 − z)/(1 − z/2) = 2r/(T + r) with r = T − t: exact integers in f32,
        # so the tail keeps full relative precision (1 − z would not). In the
        # widest enabled float (f64 under x64).
        dt = base.scalar_dtype()
        remaining = jnp.clip(decay_steps - jnp.asarray(count).astype(dt), 0.0, decay_steps)
        return end_value + (init_value - end_value) * (2.0 * remaining) / (decay_steps + remaining)

    return schedule


def warmup_rex_schedule(
    init_value: Any,
    peak_value: Any,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then REX to ``end_value``.

    The same convention as ``optax.warmup_cosine_decay_schedule``:
    ``decay_steps`` is the *total* length including the warmup, so REX runs
    over the last ``decay_steps − warmup_steps`` steps. (The REX paper's
    profile has no warmup; this is the usual combination for transformers.)

    Args:
      init_value: the value at ``count = 0``.
      peak_value: η_max, reached at ``count = warmup_steps``.
      warmup_steps: length of the linear warmup (static int >= 0).
      decay_steps: total length (static int > ``warmup_steps``).
      end_value: η_min.

    References:
      Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an
      Improved Schedule", MLSys 2022, arXiv 2107.04197.

    Example:
      >>> import optx
      >>> sched = optx.schedules.warmup_rex_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
      >>> [round(float(sched(c)), 4) for c in (0, 5, 10, 60, 110)]
      [0.0, 0.5, 1.0, 0.6667, 0.0]
    """
    warmup_steps = base.check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
    decay_steps = base.check_positive_int("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"`decay_steps` ({decay_steps}) is the total length and must exceed "
            f"`warmup_steps` ({warmup_steps})."
        )
    rex = rex_schedule(peak_value, decay_steps - warmup_steps, end_value)
    if warmup_steps == 0:
        return rex
    warmup = optax.linear_schedule(init_value, peak_value, warmup_steps)
    return optax.join_schedules([warmup, rex], [warmup_steps])
