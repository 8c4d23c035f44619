"""Tests for the comparison runner (python -m examples.compare) at tiny sizes."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import pytest
from flax import nnx

import optx
from examples import compare, training


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_writes_table_csvs_and_plot_only_under_results(tmp_path: pathlib.Path) -> None:
    out = compare.run(
        [
            "--task",
            "mlp",
            "--optimizers",
            "muon",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch",
            "32",
            "--lr-grid",
            "0.003,0.03",
            "--results-dir",
            str(tmp_path),
            "--run-name",
            "tiny",
            "--no-progress",
            "--extend-grid",
            "0",
        ]
    )
    assert out == tmp_path / "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert {p.name for p in out.iterdir()} == {
        "summary.md",
        "summary.csv",
        "sweep.csv",
        "curves.csv",
        "val_loss.png",
        "config.json",
    }
    assert (out / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = _rows(out / "summary.csv")
    assert [r["optimizer"] for r in summary] == ["adamw", "muon"]  # baseline added first
    sweep = _rows(out / "sweep.csv")
    assert len(sweep) == 4
    for name in ("adamw", "muon"):
        runs = [r for r in sweep if r["optimizer"] == name]
        best = [r for r in runs if r["best"] == "1"]
        assert len(best) == 1
        assert float(best[0]["final_val_loss"]) == min(float(r["final_val_loss"]) for r in runs)
        row = next(r for r in summary if r["optimizer"] == name)
        assert float(row["learning_rate"]) == float(best[0]["learning_rate"])
    adamw = next(r for r in summary if r["optimizer"] == "adamw")
    assert float(adamw["speedup"]) == 1.0
    curves = _rows(out / "curves.csv")
    assert len(curves) == 4 * 3  # 4 runs × (step 0, 2, 4)
    md = (out / "summary.md").read_text()
    assert "| adamw |" in md and "| muon |" in md and "Command:" in md
    assert "* muon: " in md and md.count("**lr ") == 2  # the sweep, best point in bold
    config = json.loads((out / "config.json").read_text())
    assert config["optimizers"] == ["adamw", "muon"] and config["steps"] == 4


def _result(name: str, vals: list[float], lr: float = 0.1) -> training.RunResult:
    steps = [10 * i for i in range(len(vals))]
    return training.RunResult(
        name, lr, None, steps, vals, [float(s) for s in steps], [0.0] * len(vals), 0.0, 8.0
    )


def test_summary_speedup_is_baseline_steps_over_optimizer_steps() -> None:
    results = {
        "adamw": [_result("adamw", [4.0, 3.0, 2.5, 2.0]), _result("adamw", [4.0, 3.5, 3.0, 2.8])],
        "fast": [_result("fast", [4.0, 2.0, 1.8, 1.7])],
        "slow": [_result("slow", [4.0, 3.9, 3.8, 3.7])],
    }
    rows, best = compare.summarize(results, "adamw")
    by = {r["optimizer"]: r for r in rows}
    assert best["adamw"] is results["adamw"][0]
    assert by["adamw"]["target"] == 2.0 and by["adamw"]["steps_to_target"] == 30
    assert by["fast"]["steps_to_target"] == 10 and by["fast"]["speedup"] == 3.0
    assert by["slow"]["steps_to_target"] is None and by["slow"]["speedup"] is None
    table = compare.format_table(rows)
    assert "not reached" in table and "3.00×" in table
    assert "†" not in table  # every best point is interior or the only one


def test_grid_is_extended_past_an_edge_best_point(tmp_path: pathlib.Path) -> None:
    out = compare.run(
        [
            "--task",
            "mlp",
            "--optimizers",
            "adamw",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--lr-grid",
            "0.003,0.03",
            "--extend-grid",
            "1",
            "--results-dir",
            str(tmp_path),
            "--run-name",
            "ext",
            "--no-progress",
            "--no-plot",
        ]
    )
    lrs = [float(r["learning_rate"]) for r in _rows(out / "sweep.csv")]
    # Two grid points are always both edges: one more point, a grid step (×10) beyond the best.
    assert lrs[:2] == [0.003, 0.03] and len(lrs) == 3
    assert lrs[2] in (pytest.approx(0.3), pytest.approx(0.0003))


def test_grid_extension_rule() -> None:
    interior = [_result("a", [3.0, v], lr=lr) for v, lr in ((2.5, 0.01), (2.0, 0.03), (2.2, 0.1))]
    assert compare.grid_extension(interior) is None
    top = [_result("a", [3.0, v], lr=lr) for v, lr in ((2.5, 0.01), (2.2, 0.03), (2.0, 0.1))]
    assert compare.grid_extension(top)["learning_rate"] == pytest.approx(0.333, rel=1e-3)
    bottom = [_result("a", [3.0, v], lr=lr) for v, lr in ((2.0, 0.01), (2.2, 0.02))]
    assert compare.grid_extension(bottom)["learning_rate"] == pytest.approx(0.005)
    assert compare.grid_extension([_result("a", [3.0, 2.0], lr=0.01)]) is None  # one point
    diverged = [_result("a", [3.0, float("inf")], lr=lr) for lr in (0.01, 0.1)]
    assert compare.grid_extension(diverged) is None


def test_best_lr_at_the_grid_edge_is_flagged() -> None:
    results = {
        "adamw": [
            _result("adamw", [4.0, 3.0], lr=0.001),
            _result("adamw", [4.0, 2.0], lr=0.01),
            _result("adamw", [4.0, 2.5], lr=0.1),
        ],
        "edge": [_result("edge", [4.0, 2.9], lr=0.001), _result("edge", [4.0, 2.1], lr=0.01)],
    }
    rows, _ = compare.summarize(results, "adamw")
    by = {r["optimizer"]: r for r in rows}
    assert not by["adamw"]["lr_at_grid_edge"] and by["edge"]["lr_at_grid_edge"]
    table = compare.format_table(rows)
    assert "| edge | 0.01 † |" in table and "edge of the swept grid" in table


def test_sweep_points_and_argument_parsing() -> None:
    muon = optx.get_optimizer("muon")
    pts = compare.sweep_points(muon, None, {"adam_lr_ratio": [0.1, 0.2], "unknown_kw": [1, 2]})
    assert len(pts) == 2 * len(muon.lr_grid)
    assert all(set(p) == {"learning_rate", "adam_lr_ratio"} for p in pts)
    adamw = optx.get_optimizer("adamw")
    assert len(compare.sweep_points(adamw, [0.1], {"adam_lr_ratio": [0.1, 0.2]})) == 1
    assert compare.parse_assignments(["a=1,0.5,true,none,x"], multi=True) == {
        "a": [1, 0.5, True, None, "x"]
    }
    assert compare.parse_assignments(["b=3"], multi=False) == {"b": 3}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        compare.parse_assignments(["nonsense"], multi=False)
    with pytest.raises(ValueError, match="Bad keyword"):
        compare.parse_assignments(["1x=2"], multi=False)
    assert compare.resolve_optimizers("muon, normuon", "adamw") == ["adamw", "muon", "normuon"]
    assert compare.resolve_optimizers("all", "adamw") == optx.list_optimizers()
    with pytest.raises(KeyError, match="registered"):
        compare.resolve_optimizers("no_such_optimizer", "adamw")
    with pytest.raises(SystemExit):
        compare.run(["--steps", "5", "--eval-every", "2"])
    assert math.isnan(_result("x", [1.0]).ms_per_step)


def test_a_failing_optimizer_is_recorded_not_fatal(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train = training.train

    def train(trainer: training.Trainer, **kw: object) -> training.RunResult:
        if trainer.spec.name == "muon":
            raise RuntimeError("boom")
        return real_train(trainer, **kw)

    monkeypatch.setattr(training, "train", train)
    args = [
        "--task",
        "mlp",
        "--optimizers",
        "muon",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--batch",
        "32",
        "--lr-grid",
        "0.01",
        "--results-dir",
        str(tmp_path),
        "--no-plot",
        "--no-progress",
    ]
    out = compare.run(args)
    sweep = {r["optimizer"]: r for r in _rows(out / "sweep.csv")}
    assert sweep["muon"]["error"] == "RuntimeError: boom" and sweep["muon"]["diverged"] == "1"
    assert sweep["adamw"]["error"] == ""
    assert "lr 0.01: failed" in (out / "summary.md").read_text()
    monkeypatch.setattr(
        training, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("baseline"))
    )
    with pytest.raises(RuntimeError, match="baseline"):
        compare.run(args)


def test_matrix_methods_route_from_the_model() -> None:
    """compare routes by the model's structure (optx.router_for): the LM's
    embedding and its last applied layer (``lm_head``) go to the fallback, the
    scanned attention and MLP kernels to the matrix method with their layer axis
    as a batch axis; no leaf is a name-rule guess."""
    task = training.lm_task(
        d_model=16, n_layers=2, n_heads=2, seq_len=8, batch_size=2, eval_batches=1, seed=0
    )
    table = compare.model_router(task).describe(nnx.to_pure_dict(task.params))
    rows = {row.path: row for row in table.rows}
    assert not table.guessed
    assert rows["embed/embedding"].group == "fallback"
    assert rows["lm_head/kernel"].group == "fallback"
    for path in ("blocks/mlp/up/kernel", "blocks/attn/query/kernel", "blocks/attn/out/kernel"):
        assert rows[path].group == "matrix", path
        assert rows[path].layout.batch_shape == (2,), path
