"""Multi-process runs (issue 16): 2 processes x 4 CPU devices equal 1 process x 8 devices.

JAX's multi-controller runtime (``jax.distributed``) is what real multi-host TPU/GPU runs use.
This test launches ``tests/multiprocess_worker.py`` twice on localhost (gloo CPU
collectives) and once as a single 8-device process, all three at once, and checks for every
registered optimizer that a few FSDP-sharded steps give the same parameters to float
tolerance, and that an orbax save/restore of the sharded state across the two processes
continues the run exactly.

It costs several CPU-minutes for the whole registry, so it runs only with
``OPTX_MULTIPROCESS=1`` (optionally ``OPTX_MULTIPROCESS_NAMES=adamw,muon,...``):

  OPTX_MULTIPROCESS=1 python -m pytest -n 0 -q tests/test_multiprocess.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import optx

ROOT = Path(__file__).parent.parent
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _can_run_gloo() -> str | None:
    """A reason to skip, where this platform cannot run JAX's gloo CPU collectives."""
    if sys.platform != "linux":
        return (
            f"jax.distributed with gloo CPU collectives is only exercised on Linux ({sys.platform})"
        )
    try:
        with socket.socket() as s:
            s.bind(("localhost", 0))
    except OSError as e:  # pragma: no cover - sandbox without loopback
        return f"no loopback networking: {e}"
    return None


@pytest.mark.slow
def test_two_processes_match_one_process_for_every_optimizer(tmp_path: Path) -> None:
    if os.environ.get("OPTX_MULTIPROCESS") != "1":
        pytest.skip("multi-process run is opt-in: set OPTX_MULTIPROCESS=1 (several CPU-minutes)")
    reason = _can_run_gloo()
    if reason:
        pytest.skip(reason)
    selected = os.environ.get("OPTX_MULTIPROCESS_NAMES")
    chosen = selected.split(",") if selected else optx.list_optimizers()
    names = ",".join(chosen)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = _free_port()
    common = [sys.executable, "-m", "tests.multiprocess_worker", "--names", names]
    single = subprocess.Popen(
        [*common, "--num-processes", "1", "--out", str(tmp_path / "single.npz")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    multi = [
        subprocess.Popen(
            [
                *common,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--port",
                str(port),
                "--out",
                str(tmp_path / "multi.npz"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in [single, *multi]:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            outputs.append(out.decode(errors="replace"))
    finally:
        for proc in [single, *multi]:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip([single, *multi], outputs):
        assert proc.returncode == 0, out[-4000:]

    one = np.load(tmp_path / "single.npz")
    two = np.load(tmp_path / "multi.npz")
    mismatched = []
    for name in chosen:
        spec = optx.get_optimizer(name)
        assert bool(two[f"{name}/__restored_exactly__"]), f"{name}: orbax restore diverged"
        tol = spec.equivalence_tolerance
        for key in one.files:
            if not key.startswith(name + "/"):
                continue
            a, b = one[key], two[key]
            if not np.allclose(a, b, rtol=1e-5 * tol, atol=1e-6 * tol):
                mismatched.append(f"{key}: max |diff| {np.max(np.abs(a - b)):.3g}")
    assert not mismatched, "\n".join(mismatched)
