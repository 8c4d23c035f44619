"""Named optimizers: readable ``optax.chain``\\ s of optx primitives, one module per family."""
