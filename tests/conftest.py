"""Test configuration: 8 virtual CPU devices for sharding tests (DESIGN §5).

The device count must be fixed before JAX initializes its backend, so it is set
here, at conftest import, before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# Tests compile many small programs and run them briefly: a lower LLVM
# optimization level cuts the suite's wall time by about a third on CPU.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import jax

jax.config.update("jax_num_cpu_devices", 8)


import resource  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

_START = time.monotonic()


def _max_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches_between_modules():
    """Each module's compiled programs are dropped when it ends, so a test worker's
    memory stays bounded by one module's compilations (issue 20, deliverable 9)."""
    yield
    jax.clear_caches()


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report to the controller
        workeroutput["optx_max_rss_mb"] = _max_rss_mb()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # xdist controller hook
    rss = getattr(node, "workeroutput", {}).get("optx_max_rss_mb")
    if rss is not None:
        node.config._optx_worker_rss = [*getattr(node.config, "_optx_worker_rss", []), rss]


def pytest_terminal_summary(terminalreporter, config) -> None:
    workers = getattr(config, "_optx_worker_rss", None)
    peak = max(workers) if workers else _max_rss_mb()
    where = f"{len(workers)} workers" if workers else "this process"
    terminalreporter.write_line(
        f"optx suite: wall {time.monotonic() - _START:.0f} s, "
        f"peak worker RSS {peak:.0f} MB ({where})"
    )
