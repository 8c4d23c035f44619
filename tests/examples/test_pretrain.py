"""Tests for examples/pretrain.py: quick mode end to end, resume onto another mesh."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from examples import data, pretrain


def _args(tmp: pathlib.Path, *extra: str) -> list[str]:
    return [
        "--preset", "tiny", "--optimizer", "muon", "--steps", "4", "--batch", "8",
        "--data", str(tmp / "tokens"), "--checkpoint-dir", str(tmp / "ckpt"),
        "--save-every", "2", "--no-progress", *extra,
    ]  # fmt: skip


def test_quick_run_saves_and_resumes_on_a_smaller_mesh(
    tmp_path: pathlib.Path, tiny_corpus: data.CharCorpus
) -> None:
    pretrain.write_token_files(tmp_path / "tokens", tiny_corpus)
    metrics = tmp_path / "metrics.jsonl"
    parser = pretrain.build_parser()
    first = pretrain.run(
        parser.parse_args(
            _args(
                tmp_path,
                "--mesh",
                "2,2,2",
                "--metrics",
                str(metrics),
                "--profile",
                str(tmp_path / "trace"),
            )
        )
    )
    assert first.mesh_shape == {"data": 2, "fsdp": 2, "model": 2} and first.start_step == 0
    assert sorted(first.losses) == [0, 1, 2, 3] and all(np.isfinite(list(first.losses.values())))
    assert first.losses[3] < first.losses[0]
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 4]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records[:-1]] == [0, 1, 2, 3]
    summary = records[-1]
    assert summary["summary"] and summary["mfu"] is None  # CPU: peak unknown
    assert 0.0 < summary["optimizer_share"] <= 1.0 and summary["tokens_per_s"] > 0
    assert list((tmp_path / "trace").rglob("*.xplane.pb")), "no profiler trace written"

    # 8 -> 4 devices: restore step 2 onto a (1, 2, 2) mesh and take the same two steps.
    second = pretrain.run(
        parser.parse_args(
            _args(tmp_path, "--mesh", "1,2,2", "--resume-from", "2", "--no-measure-optimizer")
        )
    )
    assert second.start_step == 2 and second.mesh_shape["data"] == 1
    for step in (2, 3):  # step 3's loss depends on the restored optimizer state
        np.testing.assert_allclose(second.losses[step], first.losses[step], rtol=1e-5)


def test_throughput_accounting() -> None:
    assert pretrain.peak_flops("TPU v4") == 275e12
    assert pretrain.peak_flops("TPU v5p") == 459e12
    assert pretrain.peak_flops("NVIDIA H200") == 989e12
    assert pretrain.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert pretrain.peak_flops("cpu") is None
    # 6 N + 12 L T d with GPT-2 small's shapes: ~ 6 x 124 M (+ attention).
    fpt = pretrain.flops_per_token(85_000_000 + 768 * 50304, 12, 1024, 768)
    assert fpt == 6 * (85_000_000 + 768 * 50304) + 12 * 12 * 1024 * 768
    assert pretrain.mfu(1e5, 1e9, 4, 1e14) == pytest.approx(0.25)
    assert pretrain.mfu(1e5, 1e9, 4, None) is None


def test_loader_rows_partition_the_global_batch(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    whole = pretrain.TokenLoader(path, batch=4, seq_len=8, accum=2, seed=3).local_batch(7)
    parts = [
        pretrain.TokenLoader(
            path, batch=4, seq_len=8, accum=2, seed=3, process_index=i, process_count=2
        ).local_batch(7)
        for i in range(2)
    ]
    for k in range(2):  # inputs, targets
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), whole[k])
    x, y = whole
    assert x.shape == (2, 4, 8) and np.array_equal(x[..., 1:], y[..., :-1])
    with pytest.raises(ValueError, match="divisible"):
        pretrain.TokenLoader(path, batch=3, seq_len=8, process_count=2)
