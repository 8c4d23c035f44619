"""optx implementation modules (private; use the flat ``optx`` namespace)."""
