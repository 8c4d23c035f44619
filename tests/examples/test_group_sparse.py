"""Smoke test of examples/group_sparse.py at a tiny size."""

from __future__ import annotations

from examples import group_sparse


def test_group_sparse_runs(tmp_path) -> None:
    report = group_sparse.main(
        [
            "--steps",
            "10",
            "--finetune",
            "3",
            "--keep",
            "4",
            "--hidden",
            "16",
            "16",
            "--batch",
            "32",
            "--out",
            str(tmp_path),
        ]
    )
    (w,), (m,) = report["wgsef"], report["magnitude"]
    assert w["k"] == 4 and len(w["active"]) == 2 and all(a <= 16 for a in w["active"])
    assert 0.0 <= w["acc_top_k"] <= 1.0 and 0.0 <= m["acc_finetuned"] <= 1.0
    assert (tmp_path / "summary.md").exists() and (tmp_path / "group_sparse.png").exists()
