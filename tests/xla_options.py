"""Compiler options for checks whose property holds for one compiler configuration.

The suite compiles with XLA:CPU's classic emitters (``tests/conftest.py``); users'
programs compile with the fusion emitters. A check that compares two differently
compiled programs bit for bit (with and without a mesh context, say) asserts a
property of the compiled code, so it compiles with the emitters users run:
``jax.jit(f, compiler_options=PRODUCTION)``.
"""

PRODUCTION: dict[str, bool] = {"xla_cpu_use_fusion_emitters": True}
