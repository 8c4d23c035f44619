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
