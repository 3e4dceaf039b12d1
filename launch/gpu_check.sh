#!/bin/bash
# Everything worth measuring on one GPU, in at most 13 minutes, with its figures as JSON:
#   1. the paper-config benchmark (`real_jax.bench`: compile s, step s, samples/s, MFU against a
#      bf16 matmul peak measured in the same run, peak HBM, greedy and beam tokens/s);
#   2. the same train step and greedy decoding in PyTorch on the same GPU (bf16 autocast), in a
#      process of its own, and the JAX / PyTorch ratios (where torch sees a GPU);
#   3. the tests that run the model on the default device (forward, train step, remat, decoding;
#      GPU_CHECK_TESTS_TIMEOUT seconds, 240 by default).
#
#   bash launch/gpu_check.sh                      # on the GPU machine
#   GPU_CHECK_PRESET=tiny bash launch/gpu_check.sh   # anywhere, tiny model (the suite runs this)
#
# Writes launch/results/gpu_check_<preset>/{devices.txt,bench.*,torch.*,tests.txt,summary.json}
# (GPU_CHECK_OUT overrides the folder). BENCHMARKS.md section 3 says where the figures go.
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

echo "== benchmark (${PRESET})"
if [ "${PRESET}" = "paper" ]; then
  # Per-device batch 32: half of what fits an H200 by the CPU memory estimate (BENCHMARKS.md 8).
  flags=(--config=configs/real.py --config.train.global_batch_size=32 --steps=10 --warmup=2)
else
  flags=(--config=configs/real.py:tiny --vocab_size=64 --steps=2 --warmup=1)
fi
bench_status=0
timeout 330 "${PY}" -m real_jax.bench "${flags[@]}" --json="${OUT}/bench.json" \
  > "${OUT}/bench.txt" 2>&1 || bench_status=$?
tail -3 "${OUT}/bench.txt"

# The same step in PyTorch on the same GPU, in a process of its own (JAX keeps most of the
# device's memory); skipped where torch sees no GPU.
if [ "${GPU_CHECK_TORCH:-1}" = 1 ] \
  && "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  echo "== PyTorch on the GPU (${PRESET})"
  timeout 200 "${PY}" -m real_jax.bench "${flags[@]}" --nojax --torch --torch_device=cuda \
    --json="${OUT}/torch.json" > "${OUT}/torch.txt" 2>&1 || echo "PyTorch benchmark failed"
  tail -3 "${OUT}/torch.txt"
fi

# --- where the step's time goes, and against the best PyTorch ------------------------------
# (paper preset only by default, ~6 of the 13 minutes; GPU_CHECK_PROFILE / GPU_CHECK_TORCH_COMPILE
# =0 or 1 override.) The tiny preset skips both: its profile has a test of its own
# (tests/scaling/test_profile_step.py), and inductor takes minutes to compile even the tiny
# model on CPU (200 s measured), too slow for the suite that runs this script.
# 1. A jax.profiler trace of 3 paper-config steps and its table of time per category
#    (launch/profile_step.py; trace, HLO, profile.{json,md} under ${OUT}/profile).
# 2. PyTorch eager and torch.compile (inductor, channels-last) in one process on the GPU, compile
#    s and step s each (torch_compiled.{json,txt}; JAX's figures are bench.json's).
# The tests below get 90 s unless GPU_CHECK_TESTS_TIMEOUT says otherwise, to stay within budget.
profile_default=0
[ "${PRESET}" = "paper" ] && profile_default=1
if [ "${GPU_CHECK_PROFILE:-${profile_default}}" = 1 ]; then
  : "${GPU_CHECK_TESTS_TIMEOUT:=90}"
  echo "== step profile by category (${PRESET})"
  timeout 240 "${PY}" launch/profile_step.py "${flags[@]}" --steps=3 --warmup=1 \
    --out="${OUT}/profile" > "${OUT}/profile.txt" 2>&1 || echo "step profile failed"
  tail -10 "${OUT}/profile.txt"
fi
if [ "${GPU_CHECK_TORCH_COMPILE:-${profile_default}}" = 1 ] \
  && "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
then
  : "${GPU_CHECK_TESTS_TIMEOUT:=90}"
  echo "== PyTorch eager and torch.compile on the GPU (${PRESET})"
  timeout 300 "${PY}" -m real_jax.bench "${flags[@]}" --nojax --torch --torch_compile \
    --torch_device=cuda --nodecode --json="${OUT}/torch_compiled.json" \
    > "${OUT}/torch_compiled.txt" 2>&1 || echo "compiled PyTorch benchmark failed"
  tail -5 "${OUT}/torch_compiled.txt"
fi
# --- end of the profile and compiled-PyTorch block ----------------------------------------------

echo "== tests on the default device"
# shellcheck disable=SC2086
# A failing or slow test is reported (and sets the exit status) but does not stop the script.
tests_status=0
timeout "${GPU_CHECK_TESTS_TIMEOUT:-240}" "${PY}" -m pytest -q -p no:cacheprovider ${TESTS} \
  > "${OUT}/tests.txt" 2>&1 || tests_status=$?
tail -3 "${OUT}/tests.txt"

"${PY}" - "${OUT}" "$(( $(date +%s) - start ))" "${tests_status}" "${bench_status}" <<'EOF'
import json, sys
from pathlib import Path

out, seconds, tests_status, bench_status = Path(sys.argv[1]), *map(int, sys.argv[2:5])
if not (out / "bench.json").exists():
    sys.exit(f"the benchmark failed (exit status {bench_status}): see {out}/bench.txt")
bench = json.loads((out / "bench.json").read_text())
tests = (out / "tests.txt").read_text().strip().splitlines()
keys = ("compile_s", "step_s", "samples_per_s", "mfu", "peak_flops_per_s",
        "peak_device_memory_bytes", "decode_greedy_tokens_per_s", "decode_beam_tokens_per_s")
summary = {"machine": bench["machine"], "config": bench["config"],
           "tests": tests[-1] if tests else "no output", "tests_exit_status": tests_status,
           "wall_s": seconds,
           "jax": {k: bench["jax"].get(k) for k in keys}}
if (out / "torch.json").exists():
    torch_side = json.loads((out / "torch.json").read_text())["torch"]
    summary["torch"] = {k: torch_side.get(k) for k in (
        "torch_version", "device", "dtype", "step_s", "samples_per_s",
        "peak_device_memory_bytes", "decode_greedy_tokens_per_s")}
    summary["jax_over_torch"] = {
        "train_samples_per_s": bench["jax"]["samples_per_s"] / torch_side["samples_per_s"],
        "decode_greedy_tokens_per_s": bench["jax"]["decode_greedy_tokens_per_s"]
        / torch_side["decode_greedy_tokens_per_s"]}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF

# ---- rehearsal: the paper configuration through the commands users run (launch/rehearsal.py),
# here at batch 32 for 30 steps, fed by the real pipeline (synthetic studies, 8 grain workers):
# kill + resume bitwise, beam evaluation, predict, export parity. It gets what is left of the
# script's budget (GPU_CHECK_BUDGET_S, 780 s); a run cut short leaves the stages it finished in
# OUT/rehearsal.json. Its data, compilation cache and logs go to GPU_CHECK_REHEARSAL_DIR. Not run
# for the tiny preset: the suite tests the rehearsal's logic itself
# (tests/reliability/test_rehearsal.py), and a tiny rehearsal would add minutes to the suite.
rehearsal_status=0
if [ "${PRESET}" = "paper" ] && [ "${GPU_CHECK_REHEARSAL:-1}" = 1 ]; then
  left=$(( ${GPU_CHECK_BUDGET_S:-780} - ($(date +%s) - start) ))
  if [ "${left}" -ge 120 ]; then
    echo "== rehearsal (paper config, batch 32, ${left} s left)"
    scratch="${GPU_CHECK_REHEARSAL_DIR:-/tmp/real_jax_rehearsal}"
    timeout "${left}" "${PY}" launch/rehearsal.py --out "${scratch}" --batch 32 --steps 30 \
      --checkpoint_every 15 --subjects 20 > "${OUT}/rehearsal.txt" 2>&1 || rehearsal_status=$?
    cp "${scratch}/rehearsal.json" "${OUT}/rehearsal.json" 2>/dev/null || true
    tail -25 "${OUT}/rehearsal.txt"
  else
    echo "== rehearsal skipped: ${left} s left of the ${GPU_CHECK_BUDGET_S:-780} s budget"
  fi
fi
exit $(( bench_status || tests_status || rehearsal_status ))
