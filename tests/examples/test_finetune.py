"""Smoke test of the fine-tuning benchmark (python -m examples.finetune) at tiny sizes."""

from __future__ import annotations

import pathlib

from examples import finetune

_TEXTS = [
    (f"play{i}", f"To be, or not to be, that is question {i}:\nWhether 'tis nobler\n" * 6)
    for i in range(4)
]


def test_finetune_runs_and_writes_the_table(tmp_path: pathlib.Path) -> None:
    out = finetune.run(
        [
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--seq-len",
            "16",
            "--batch",
            "4",
            "--pretrain-steps",
            "2",
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--rank",
            "2",
            "--methods",
            "lora_pro",
            "--lr-grid",
            "0.01",
            "--results-dir",
            str(tmp_path),
            "--no-plot",
        ],
        texts=_TEXTS,
    )
    summary = (out / "summary.md").read_text()
    assert "| lora_pro | 0.01 |" in summary
    assert (out / "sweep.csv").exists()
