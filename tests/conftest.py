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
# Opt-in (OPTX_TEST_CLASSIC_EMITTERS=1): XLA:CPU's classic elemental emitter instead of
# the MLIR fusion emitters compiles these small programs about 3x faster with half
# the memory (conformance steps of adamw, muon, soap, mkor, cosmos, galore_8bit: 14.8 s
# -> 4.3-6.4 s of compile, 850 -> 430 MB peak). Not the default: its round-off differs,
# and two checks that compare differently compiled programs amplify that (SOAP's
# inject-vs-plain: the null space of a rank-deficient factor, 0.017 absolute; GaLore-8bit:
# one quantization code flips, 1.6e-7). The float64 references and the official goldens
# hold with it (tests/conformance/test_float64.py, test_faithfulness, test_deviations).
if (
    os.environ.get("OPTX_TEST_CLASSIC_EMITTERS") == "1"
    and "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]
):
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"

import jax

jax.config.update("jax_num_cpu_devices", 8)
