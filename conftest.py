"""Suite resources for every test item, doctests in ``optx/`` included (issue 20,
deliverable 9): compiled programs dropped once a worker passes a memory bound,
the run's wall time, CPU time and peak worker RSS printed at its end.

It sits at the repository root because pytest scopes a conftest's item hooks
(setup, call, teardown) and fixtures to its directory: in ``tests/`` they missed
the doctests of ``optx/``, whose workers then grew to 2 GB. The 8-device XLA setup
stays in ``tests/conftest.py``: this file also runs for the docs and notebooks,
whose kernels inherit the environment.
"""

import ctypes
import gc
import os
import resource
import sys
import time

import pytest

_START = time.monotonic()


def _max_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def _release_memory() -> None:
    """Drops every compiled program and returns the freed heap to the OS
    (``jax.clear_caches`` frees the executables, but glibc keeps the pages:
    ``malloc_trim`` gives back ~200 MB after a few optimizers' steps)."""
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _current_rss_mb() -> float:
    """This process's resident memory now (not its peak); 0 where /proc is absent."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


# Compiled programs are dropped only when a worker's resident memory passes this
# bound (MB): tests keep sharing them otherwise, within a module and across modules
# (the small programs of eager ops above all).
_RSS_RELEASE_MB = float(os.environ.get("OPTX_TEST_RSS_RELEASE_MB", "1000"))


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Bounds a worker's memory without recompiling what tests share: compiled
    programs are dropped only once resident memory passes
    ``OPTX_TEST_RSS_RELEASE_MB``. Measured, CPU-s: xdist runs a module's tests in
    collection order, optimizers interleaved, and dropping programs at every
    optimizer change recompiled what the next test of the same optimizer reuses
    (``tests/test_conformance.py`` on four optimizers, 342 that way, 163 with
    this rule); dropping them at every module end recompiled the small programs
    of eager ops (ten unit-test modules, 54 that way, 45 with this rule)."""
    if _current_rss_mb() > _RSS_RELEASE_MB:
        _release_memory()


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# The test during which this process's peak RSS was last raised (the peak test).
_PEAK = {"test": "", "rss_mb": 0.0}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    cpu, wall = _cpu_s(), time.monotonic()
    yield
    rss = _max_rss_mb()
    if rss > _PEAK["rss_mb"]:
        _PEAK.update(test=item.nodeid, rss_mb=rss)
    if os.environ.get("OPTX_TEST_TIMES"):  # per-test CPU/wall/RSS, one file per worker
        worker = getattr(item.config, "workerinput", {}).get("workerid", "main")
        with open(f"{os.environ['OPTX_TEST_TIMES']}.{worker}", "a") as f:
            f.write(
                f"{_cpu_s() - cpu:.2f}\t{time.monotonic() - wall:.2f}\t{rss:.0f}\t"
                f"{_current_rss_mb():.0f}\t{item.nodeid}\n"
            )


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: report to the controller
        workeroutput["optx_max_rss_mb"] = _max_rss_mb()
        workeroutput["optx_cpu_s"] = _cpu_s()
        workeroutput["optx_peak_test"] = _PEAK["test"]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # xdist controller hook
    out = getattr(node, "workeroutput", {})
    if "optx_max_rss_mb" in out:
        report = (out["optx_max_rss_mb"], out.get("optx_cpu_s", 0.0), out.get("optx_peak_test", ""))
        node.config._optx_workers = [*getattr(node.config, "_optx_workers", []), report]


def pytest_terminal_summary(terminalreporter, config) -> None:
    """The suite's wall time, its CPU time (user + sys of every worker: what a
    loaded machine does not inflate) and the peak worker RSS with the test that
    reached it (issue 20, deliverable 9; ``.ci/run`` repeats this line last)."""
    workers = getattr(config, "_optx_workers", None) or [(_max_rss_mb(), _cpu_s(), _PEAK["test"])]
    where = f"{len(workers)} workers" if len(workers) > 1 else "1 process"
    peak, _, test = max(workers)
    line = (
        f"optx suite: wall {time.monotonic() - _START:.0f} s, "
        f"CPU {sum(w[1] for w in workers):.0f} s, "
        f"peak worker RSS {peak:.0f} MB ({where}; reached in {test or '?'})"
    )
    terminalreporter.write_line(line)
    if os.environ.get("OPTX_SUITE_SUMMARY"):  # .ci/run prints it again at its end
        with open(os.environ["OPTX_SUITE_SUMMARY"], "w") as f:
            f.write(line + "\n")
