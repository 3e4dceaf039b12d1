#!/bin/bash
# Single-host training on every GPU (or TPU core) of this machine: one process, data parallel
# over all local devices (one `data` mesh axis; add --config.mesh.fsdp=True to shard parameters
# and optimizer state). No distributed set-up is needed for one process.
#
#   launch/single_host.sh [real_jax.main flags ...]
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/single_host.sh --config.train.global_batch_size=128
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-configs/real.py}"
WORKDIR="${WORKDIR:-runs/real}"
exec python -m real_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" "$@"
