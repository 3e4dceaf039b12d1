#!/bin/bash
# The wheels a GPU machine without network needs beside what its image already has, in one
# folder that travels with the working tree (launch/wheels, git-ignored, about 25 MB).
#
#   bash launch/gpu_wheels.sh [OUT_DIR]      # on a machine that reaches PyPI
#
# The lent GPU image (Python 3.12, jax 0.11 with CUDA 13, flax, optax, orbax, torch, numpy,
# protobuf, etils, pyarrow...) lacks grain, array-record, tensorflow-datasets and ml-collections,
# and its transformers is 5.x, which has no Flax models (the decoder is FlaxGPT2). The set below
# is those packages plus the dependencies the image does not have, for CPython 3.12 on
# manylinux x86-64, without their own dependencies (--no-deps: the image's versions stay).
# launch/gpu_check.sh installs them into a folder of their own that goes first on PYTHONPATH,
# so nothing in the image changes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-launch/wheels}"
PY="${PYTHON:-python3}"
mkdir -p "${OUT}"
PACKAGES=(
  "ml-collections==1.1.0"
  "grain==0.2.18" "array-record==0.8.6" "portpicker==1.6.0"
  "tensorflow-datasets==4.9.10" "tensorflow-metadata==1.21.0" "dm-tree==0.1.10"
  "immutabledict==4.3.1" "simple-parsing==0.1.9" "docstring-parser==0.18.0"
  "termcolor==3.3.0" "toml==0.10.2" "googleapis-common-protos==1.76.0"
  "transformers==4.57.6" "tokenizers==0.22.2" "huggingface-hub==0.36.2"
)
"${PY}" -m pip download --quiet --dest "${OUT}" --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  "${PACKAGES[@]}"
# promise (a tensorflow-datasets dependency) is published as source only: build its pure-Python
# wheel here.
"${PY}" -m pip wheel --quiet --no-deps --wheel-dir "${OUT}" "promise==2.3"
du -sh "${OUT}"
ls "${OUT}"
