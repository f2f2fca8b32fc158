#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on a lent GPU machine that has no network: run this HERE (with network),
# in the repo root, before the device run.
#
# The lent machine (nvidia-h200: Python 3.12, torch 2.11 + CUDA, accelerate 1.15, huggingface_hub 1.33,
# tokenizers 0.23, safetensors 0.8, numpy, pillow, pyyaml, tqdm, rich, typer, tensorboard; transformers 5.17)
# lacks diffusers and pydantic. We carry the versions this repo is tested with: diffusers, pydantic (+ its
# core, annotated-types, typing-inspection, typing-extensions), transformers 5.23 + peft 0.21 (the pinned
# pair, DESIGN.md) and regex (transformers checks regex >= 2025.10.22 at import). About 24 MB; the limit for
# the working tree plus carried paths is 64 MiB.
#
# Then, on the device (each call is one command; a fresh machine is bare, so every call installs again; the
# device time of a session is 15 minutes including a ~2 minute start, one command at most 10 minutes):
#
#   run(carry=[".whl"], timeout_s=600, command=
#     "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
#      .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit; nvidia-smi -L; PYTHONUNBUFFERED=1 python3
#      benchmarks/gpu_check.py --time-budget 520 --workdir /tmp/gc --out $OUT")
#
# (one line; name `.whl` in carry, and copy or check out this branch in the checkout the session sends). Configs
# run in priority order (one LoRA and one full fine-tune per family first) and what does not
# fit in --time-budget is listed as "not run"; if device time is left, a second call with
# --configs NAME,NAME,... runs those. $OUT then holds gpu_check.md, gpu_check.json and gpu_check.log.
#
# Checked without a GPU (Nov 2026): in a Python 3.12 venv holding the machine's versions of huggingface_hub (1.33.0),
# tokenizers (0.23.2), safetensors (0.8.0), numpy (2.5.2), accelerate (1.15.0) and no pydantic, the install line
# above succeeds, transformers' import-time version checks pass, and sdtune.config loads the ready configs; a
# `pip install --dry-run` of these wheels with those versions resolves, adding only importlib-metadata and
# lazy-importer (diffusers declares them; Python 3.12 never imports them). torch itself could not be resolved
# here (its CUDA 13 wheels are not on this machine's index); torch 2.11 is within sdtune's torch>=2.4,<2.14.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  diffusers==0.42.1
  transformers==5.23.0
  peft==0.21.2
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  regex==2026.11.19
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

exclude="$(git rev-parse --git-path info/exclude)"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"   # never committed, carried by `run`
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"
count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "expected ${#WHEELS[@]} wheels, got $count: one version of each, or the install stops" >&2
  exit 1
fi
ls -1 .whl
du -sh .whl
