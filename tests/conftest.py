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
# XLA:CPU's classic elemental emitter (the MLIR fusion emitters are what users get)
# compiles these small programs about 3x faster with half the memory: the whole
# suite's CPU time fell from 2,162 s to 1,311 s, its peak worker RSS from
# 1,463 to 1,299 MB (clean-clone CI). Numbers agree to round-off (the float64 references, the
# official goldens and every tolerance check hold with either). Checks that compare
# two differently compiled programs bit for bit (tests/conformance/test_mesh.py: with
# and without a mesh context), or near a rank-deficient eigenbasis (SOAP's and Conda's
# inject-vs-plain check), compile them with the production emitters
# (tests/xla_options.py), since only the emitter users run makes that a property of
# optx. OPTX_TEST_FUSION_EMITTERS=1 runs the whole suite with the fusion emitters.
if (
    os.environ.get("OPTX_TEST_FUSION_EMITTERS") != "1"
    and "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]
):
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

import jax

jax.config.update("jax_num_cpu_devices", 8)
