#!/usr/bin/env bash
# Issue 17's accelerator figures in one prepared run, for a lent GPU (or any CUDA/TPU host).
#
#   OUT=results/gpu bash benchmarks/gpu_figures.sh            # GPT-2-small trees
#   PRESET=tiny NS_PRESETS=tiny OUT=/tmp/x bash benchmarks/gpu_figures.sh   # a CPU dry run
#   PARTS=quantile_selection,compile_flags OUT=... bash benchmarks/gpu_figures.sh  # some parts
#
# All parts together take longer than one 10-minute device command (the first H200 run took
# 488 s without the last four parts): pick PARTS per call. Not yet run on a GPU (2026-12-04):
# pallas_8bit, quantile_selection, linalg, twins_elementwise, twins_refresh, step_soap, compile_flags.
#
# Parts, in order of priority, each bounded by its own timeout so that one slow or failing
# part leaves the others' figures: versions; Newton–Schulz in bf16 and f32 against the bf16
# matmul peak; 8-bit AdamW against AdamW; the 8-bit Pallas kernel against it; every registered optimizer's step × optax.adamw on
# the scanned tree (two runs, each with its own adamw baseline and calibration); optx.muon
# against optax.contrib.muon; ROOT's selection with 1, 2 or 4 key bits per counting pass; QR,
# eigh and SVD on the basis methods' shapes (COSMOS ran at 0.18 of its bound); the optax
# twins; SOAP's step alone; SOAP/COSMOS/MKOR compile and step time with XLA's GEMM autotuning
# off and with cuBLAS for every GEMM (is autotuning SOAP's many distinct GEMM shapes what made
# its step compile for 114.5 s?). Tables go to $OUT/figures.md, logs to
# $OUT/log.txt, the step table to $OUT/step_*.csv.
set -u
OUT=${OUT:-results/gpu}
PRESET=${PRESET:-gpt2-small}
NS_PRESETS=${NS_PRESETS:-small,gpt2-small}
PY=${PY:-python3}
PARTS=${PARTS:-all}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
FIG="$OUT/figures.md"
LOG="$OUT/log.txt"
: >"$FIG"
: >"$LOG"

part() {
  local name=$1 limit=$2
  shift 2
  [[ $PARTS == all || ,$PARTS, == *,$name,* ]] || return 0
  local t0=$SECONDS
  echo "## $name" >>"$FIG"
  echo '```' >>"$FIG"
  echo "\$ $*" >>"$FIG"
  timeout "$limit" "$@" >>"$FIG" 2>>"$LOG"
  local rc=$?
  echo '```' >>"$FIG"
  echo "[$name] rc=$rc $((SECONDS - t0))s" | tee -a "$FIG" "$LOG"
  [[ $rc == 0 ]] || echo "[$name] FAILED (rc=$rc): see $LOG" | tee -a "$FIG" "$LOG" >&2
}

# Group A: the methods the issue names, the twins' methods and the 8-bit states; group B: the rest
# but SOAP, whose step compiled in 114.5 s on an H200 (2026-12-04): it runs last, alone.
GROUP_A=muon,normuon,root,cosmos,mkor,mfac,adamw,adamw_8bit,galore,galore_8bit,agvm_sgd,sophia_h,adahessian,lion,adabelief,sophia_g,apollo_mini
GROUP_B=$($PY -c "
import optx
a = set('$GROUP_A,soap'.split(','))
print(','.join(n for n in optx.list_optimizers() if n not in a))")

command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$FIG"
part versions 60 $PY -c "
import jax, optax, optx
print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
part newton_schulz 100 $PY benchmarks/newton_schulz_peak.py --presets "$NS_PRESETS" --reps 20
part quantization 80 $PY benchmarks/quantization_cost.py --preset "$PRESET" --repeats 20
# The fused Pallas (Triton) kernel of kernel='pallas' next to the XLA path: never run on a GPU
# yet; a kernel that does not compile fails this part (rc != 0, FAILED line, traceback in $LOG),
# and so does a run without a CUDA device (a CPU dry run reports it FAILED by design).
part pallas_8bit 150 $PY benchmarks/quantization_cost.py --preset "$PRESET" --repeats 20 \
  --pallas --no-references --require-gpu
part step_a 150 $PY benchmarks/step_cost.py --preset "$PRESET" --scanned --repeats 10 \
  --optimizers "$GROUP_A" --csv "$OUT/step_a.csv"
part step_b 150 $PY benchmarks/step_cost.py --preset "$PRESET" --scanned --repeats 10 \
  --optimizers "$GROUP_B" --csv "$OUT/step_b.csv"
part muon 60 $PY benchmarks/muon_step.py --size "$PRESET" --reps 20
part quantile_selection 60 $PY benchmarks/quantile_selection.py --preset "$PRESET" --scanned
part linalg 90 $PY benchmarks/linalg_cost.py --shapes 12x768x64,12x3072x64,12x768x768
part twins_elementwise 90 $PY benchmarks/twin_cost.py --size "$PRESET" --rounds 5 \
  --pairs adamw,adabelief,lion,muon
part twins_refresh 120 $PY benchmarks/twin_cost.py --size "$PRESET" --rounds 5 --pairs galore,sophia
part step_soap 200 $PY benchmarks/step_cost.py --preset "$PRESET" --scanned --repeats 5 \
  --optimizers soap --csv "$OUT/step_soap.csv"
for flags in --xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false; do
  [[ $PARTS == all || ,$PARTS, == *,compile_flags,* ]] && echo "with XLA_FLAGS $flags:" >>"$FIG"
  XLA_FLAGS="${XLA_FLAGS:-} $flags" part compile_flags 150 $PY benchmarks/step_cost.py \
    --preset "$PRESET" --scanned --repeats 5 --optimizers soap,cosmos,mkor,muon --no-roofline
  grep "compiled" "$LOG" | tail -6 >>"$FIG"
done
