#!/bin/bash
# Everything worth measuring on one GPU in one run of about 9 minutes (GPU_CHECK_BUDGET_S, 540 s
# by default: a device session's single command may last 10), with its figures as JSON. In order
# of value, each step bounded by its own limit and by what is left of the budget (a step that
# would get less than it needs is skipped and listed in summary.json's "skipped"):
#   1. the paper-config benchmark (`real_jax.bench`: compile s, step s, samples/s, MFU against a
#      bf16 matmul peak measured in the same run, peak HBM, greedy and beam tokens/s);
#   2. the same train step in PyTorch on the same GPU (bf16 autocast), eager and under
#      `torch.compile` (inductor, channels-last), compile s and step s each, in a process of its
#      own, and the JAX / PyTorch ratios (where torch sees a GPU);
#   3. where the step's time goes: a `jax.profiler` trace of 3 steps and its table of time per
#      category (`launch/profile_step.py`, OUT/profile/profile.{json,md});
#   4. the training command fed by the real pipeline: `python -m real_jax.main` on synthetic
#      studies ingested at 544 px, the preset's grain workers (`launch/rehearsal.py
#      --train_only`): compile s, s per step, samples/s beside the benchmark's random batches;
#   5. the tests that run the model on the default device (forward, train step, remat, beam).
# GPU_CHECK_REHEARSAL=1 then runs the whole rehearsal (kill + resume bitwise, beam evaluation,
# predict, export parity) at batch 32 with what is left (it needs ~5 more minutes).
#
#   bash launch/gpu_check.sh                      # on the GPU machine
#   GPU_CHECK_PRESET=tiny bash launch/gpu_check.sh   # anywhere, tiny model (the suite runs this)
#
# Writes launch/results/gpu_check_<preset>/{devices.txt,bench.*,torch.*,profile*,train/,
# tests.txt,summary.json} (GPU_CHECK_OUT overrides the folder). BENCHMARKS.md section 3 says
# where the figures go. GPU_CHECK_TORCH_COMPILE, GPU_CHECK_PROFILE, GPU_CHECK_TRAIN = 0 or 1
# override steps 2-4's defaults (on for the paper preset; off for the tiny preset, which the
# suite runs: the profile and the training stage have tests of their own
# (tests/scaling/test_profile_step.py, tests/reliability/test_rehearsal.py), and inductor takes
# minutes to compile even the tiny model on CPU, so only the channels-last eager step is tested).
#
# Machines without network: `bash launch/gpu_wheels.sh` (elsewhere) fills launch/wheels with what
# the GPU image lacks; when that folder is present and the image cannot import the project's
# dependencies, this script installs the wheels into a folder of their own (`pip --target`) that
# goes first on PYTHONPATH, so that they shadow the image's versions (its transformers 5.x) and
# nothing in the image changes. (A `--system-site-packages` virtual environment would not do:
# the image's python3 is itself a virtual environment, whose packages a new one does not see.)
# The project is used from this checkout, so the image's jax, flax, optax, orbax are the ones
# tested.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET="${GPU_CHECK_PRESET:-paper}"
OUT="${GPU_CHECK_OUT:-launch/results/gpu_check_${PRESET}}"
PY="${PYTHON:-python3}"
TESTS="${GPU_CHECK_TESTS:-tests/model/test_forward_and_generation.py tests/model/test_train_step.py tests/model/test_remat.py tests/model/test_beam_search.py}"
mkdir -p "${OUT}"
start=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
: > "${OUT}/skipped.txt"

# step NAME LIMIT_S NEEDS_S COMMAND...: runs COMMAND under `timeout` of LIMIT_S or what is left
# of the budget, whichever is less; skips it (a line in skipped.txt) when less than NEEDS_S is
# left. Returns the command's exit status (124: timed out).
step() {
  local name=$1 limit=$2 needs=$3 left
  shift 3
  left=$(( BUDGET - ($(date +%s) - start) ))
  if [ "${left}" -lt "${needs}" ]; then
    echo "== ${name}: skipped, ${left} s of the ${BUDGET} s budget left (needs ${needs})"
    echo "${name}: ${left} s left, needs ${needs}" >> "${OUT}/skipped.txt"
    return 0
  fi
  if [ "${left}" -lt "${limit}" ]; then limit=${left}; fi
  echo "== ${name} (up to ${limit} s; ${left} s left)"
  timeout "${limit}" "$@"
}
imports="import grain, ml_collections, tensorflow_datasets, transformers.models.gpt2.modeling_flax_gpt2"
if ! "${PY}" -c "${imports}" 2>/dev/null; then
  if [ ! -d launch/wheels ]; then
    echo "error: ${PY} lacks the project's dependencies and launch/wheels is absent" \
         "(run launch/gpu_wheels.sh on a machine with network, or pip install -e .)" >&2
    exit 2
  fi
  CARRIED="${GPU_CHECK_SITE:-/tmp/real_jax_carried_wheels}"
  "${PY}" -m pip install --quiet --no-index --no-deps --upgrade --target "${CARRIED}" \
    launch/wheels/*.whl
  export PYTHONPATH="${CARRIED}${PYTHONPATH:+:${PYTHONPATH}}"
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
"${PY}" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" | tee "${OUT}/devices.txt"

on_paper=0
[ "${PRESET}" = "paper" ] && on_paper=1
torch_gpu=0
if [ "${GPU_CHECK_TORCH:-1}" = 1 ] \
  && "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  torch_gpu=1
fi
if [ "${on_paper}" = 1 ]; then
  # Per-device batch 32: half of what fits an H200 by the CPU memory estimate (BENCHMARKS.md 8).
  flags=(--config=configs/real.py --config.train.global_batch_size=32 --steps=10 --warmup=2)
else
  flags=(--config=configs/real.py:tiny --vocab_size=64 --steps=2 --warmup=1)
fi

bench_status=0
step "benchmark (${PRESET})" 330 60 "${PY}" -m real_jax.bench "${flags[@]}" \
  --json="${OUT}/bench.json" > "${OUT}/bench.txt" 2>&1 || bench_status=$?
tail -3 "${OUT}/bench.txt" 2>/dev/null || true

# PyTorch in a process of its own: JAX keeps most of the device's memory. Eager first (with its
# greedy decoding), then compiled; both land in torch.json.
if [ "${torch_gpu}" = 1 ]; then
  compiled=()
  limit=120
  if [ "${GPU_CHECK_TORCH_COMPILE:-${on_paper}}" = 1 ]; then
    compiled=(--torch_compile)
    limit=270
  fi
  step "PyTorch on the GPU (${PRESET}${compiled:+, eager and torch.compile})" "${limit}" 60 \
    "${PY}" -m real_jax.bench "${flags[@]}" --nojax --torch ${compiled[@]+"${compiled[@]}"} \
    --torch_device=cuda --json="${OUT}/torch.json" > "${OUT}/torch.txt" 2>&1 \
    || echo "PyTorch benchmark failed or timed out: ${OUT}/torch.txt"
  tail -6 "${OUT}/torch.txt" 2>/dev/null || true
fi

# Compiles the step again (no compilation cache here: the benchmark reports a cold compile).
if [ "${GPU_CHECK_PROFILE:-${on_paper}}" = 1 ]; then
  step "step profile by category (${PRESET})" 180 60 "${PY}" launch/profile_step.py \
    "${flags[@]}" --steps=3 --warmup=1 --out="${OUT}/profile" > "${OUT}/profile.txt" 2>&1 \
    || echo "step profile failed or timed out: ${OUT}/profile.txt"
  tail -12 "${OUT}/profile.txt" 2>/dev/null || true
fi

# The training command fed by grain workers; 40 steps logged every 10, one checkpoint at the
# end, no evaluation: s per step over the intervals after the first.
if [ "${GPU_CHECK_TRAIN:-${on_paper}}" = 1 ]; then
  train_dir="${GPU_CHECK_TRAIN_DIR:-/tmp/real_jax_gpu_train}"
  step "training command, real pipeline (${PRESET}, batch 32)" 300 150 "${PY}" \
    launch/rehearsal.py --out "${train_dir}" --preset "${PRESET}" --train_only --batch 32 \
    --steps 40 --checkpoint_every 40 --log_every 10 --subjects 40 --image_width 1024 --no_scoring \
    > "${OUT}/train.txt" 2>&1 || echo "training command failed or timed out: ${OUT}/train.txt"
  cp "${train_dir}/rehearsal.json" "${OUT}/train.json" 2>/dev/null || true
  tail -8 "${OUT}/train.txt" 2>/dev/null || true
fi

# A failing or slow test is reported (and sets the exit status) but does not stop the script.
tests_status=0
# shellcheck disable=SC2086
step "tests on the default device" "${GPU_CHECK_TESTS_TIMEOUT:-240}" 60 \
  "${PY}" -m pytest -q -p no:cacheprovider ${TESTS} > "${OUT}/tests.txt" 2>&1 \
  || tests_status=$?
[ -f "${OUT}/tests.txt" ] && tail -3 "${OUT}/tests.txt"

rehearsal_status=0
if [ "${on_paper}" = 1 ] && [ "${GPU_CHECK_REHEARSAL:-0}" = 1 ]; then
  scratch="${GPU_CHECK_REHEARSAL_DIR:-/tmp/real_jax_rehearsal}"
  step "rehearsal (paper config, batch 32)" 3600 240 "${PY}" launch/rehearsal.py \
    --out "${scratch}" --batch 32 --steps 30 --checkpoint_every 15 --subjects 20 \
    > "${OUT}/rehearsal.txt" 2>&1 || rehearsal_status=$?
  cp "${scratch}/rehearsal.json" "${OUT}/rehearsal.json" 2>/dev/null || true
  tail -25 "${OUT}/rehearsal.txt" 2>/dev/null || true
fi

"${PY}" launch/gpu_summary.py "${OUT}" "$(( $(date +%s) - start ))" "${tests_status}" \
  "${bench_status}"
exit $(( bench_status || tests_status || rehearsal_status ))
