#!/usr/bin/env bash
# On one GPU, from the repo root: the safe strategy validated every 100 steps over 3 seeds (the README's validation
# plot and docs/validation.md's table), then a steps sweep that trains once (200, 400, 800 in parallel jobs).
set -euo pipefail
S=${1:-/tmp/validation-sweep}
CACHE=${CACHE:-/tmp/validation-store}
python -m stylexfer -m +strategy=safe train.validate_every=100 train.seed=0,1,2 model.device=cuda \
  hydra.launcher.n_jobs=3 paths.cache_dir=$CACHE hydra.sweep.dir=$S/validate
python docs/bench/validation_seeds.py $S/validate
python -m stylexfer -m +strategy=safe train.steps=800,400,200 model.device=cuda hydra.launcher.n_jobs=3 \
  paths.cache_dir=$CACHE-steps hydra.sweep.dir=$S/steps
