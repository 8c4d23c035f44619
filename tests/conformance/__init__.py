"""Shared conformance suite: problems and helpers used by tests/test_conformance.py."""
