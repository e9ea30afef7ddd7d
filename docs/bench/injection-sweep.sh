#!/usr/bin/env bash
# The injection ablation in the pocket world on one GPU (what docs/injection.md reports), run from the repo root.
set -euo pipefail
S=${1:-/tmp/injection-sweep}
python -m stylexfer -m +ablation=injection model.device=cuda hydra.launcher.n_jobs=${JOBS:-8} \
  paths.cache_dir=${CACHE:-/tmp/injection-store} hydra.sweep.dir=$S
python -m stylexfer.compare $S
