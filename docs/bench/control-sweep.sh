#!/usr/bin/env bash
# The structure-control ablation in the pocket world on one GPU (what docs/control.md reports), run from the repo
# root, then the cost of both remedies on the SD 2.1-shaped random model (one style's sampling).
set -euo pipefail
S=${1:-/tmp/control-sweep}
python -m stylexfer -m +ablation=control model.device=cuda hydra.launcher.n_jobs=${JOBS:-8} \
  paths.cache_dir=${CACHE:-/tmp/control-store} hydra.sweep.dir=$S
python -m stylexfer.compare $S
python -m stylexfer.tools.bench --arch ${ARCH:-../shared/reference/sd21_architecture.json} --part remedies \
  --styles 1 --images 10 --prompts 10 --work /tmp/remedies-bench --out ${BENCH_OUT:-remedies.json}
