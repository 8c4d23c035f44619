"""Smoke test of examples/eggroll_demo.py at a tiny size."""

from __future__ import annotations

import json

from examples import eggroll_demo


def test_eggroll_demo_runs(tmp_path) -> None:
    runs = eggroll_demo.main(
        [
            "--generations",
            "4",
            "--population",
            "8",
            "--batch",
            "16",
            "--hidden",
            "8",
            "--eval-every",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert [r["method"] for r in runs] == ["eggroll", "openes", "backprop"]
    for r in runs:
        assert len(r["history"]["val_acc"]) == 2 and 0.0 <= r["final_val_acc"] <= 1.0
        assert r["flops_per_generation"] > 0
    # Rank-1 noise is cheaper than full-rank noise for the same population.
    assert eggroll_demo.noise_floats(eggroll_demo.build_parser().parse_args([]), "eggroll") < (
        eggroll_demo.noise_floats(eggroll_demo.build_parser().parse_args([]), "openes")
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["runs"]) == 3
    assert (tmp_path / "summary.md").exists() and (tmp_path / "eggroll.png").exists()
