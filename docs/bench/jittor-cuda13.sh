#!/bin/bash
# The Jittor backend on a CUDA 13 GPU (issue 13, 2026-11-26, an H100 of the device tool): jittor 1.3.11 patched as
# docs/bench/h100-2026-11-26-backends.json lists, then python -m stylexfer.bench_backends. Wheels in .whl/ (jittor, astunparse,
# numpy 1.26 in .whl/np1/, the stylexfer stack), jittor-offline's archives in .whl/jo/. STAGE=smoke|bench|all.
set -o pipefail
rm -rf /tmp/site/numpy /tmp/site/numpy-* /tmp/site/numpy.libs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/np1 .whl/np1/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/jo:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1
NP1=/tmp/np1:/tmp/site:$PWD/.whl/jo:$PWD
export STYLEXFER_JITTOR_ANY_CUDA=1 use_cutt=0 use_cutlass=0 use_nccl=0 use_mpi=0 JITTOR_HOME=/tmp/jh conv_opt=1 nvcc_path=$(which nvcc || echo /usr/local/cuda/bin/nvcc)
J=/tmp/site/jittor
grep -rln "clockRate\|computeMode" $J/extern $J/src | tee $OUT/patched.txt
for f in $(grep -rln "clockRate\|computeMode" $J/extern $J/src); do
  sed -i -e 's/deviceProp\.computeMode == cudaComputeModeProhibited/false/g' -e 's/deviceProp\.computeMode != cudaComputeModeProhibited/true/g' -e 's/deviceProp\.clockRate/1/g' -e 's/deviceProp\.memoryClockRate/1/g' $f
done
sed -i -e "s/-Wno-unknown-pragmas -std=c++14 -fPIC/-Wno-unknown-pragmas -std=c++17 -fPIC/" -e "s/\"-std=c++14 -Xcompiler -std:c++14\"/\"-std=c++17\"/" $J/compiler.py; grep -c "std=c++17 -fPIC" $J/compiler.py
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import numpy, torch; print('numpy', numpy.__version__, 'torch', torch.__version__)"
STAGE=${STAGE:-smoke}
if [ "$STAGE" = smoke ] || [ "$STAGE" = all ]; then
PYTHONPATH=$NP1 timeout ${SMOKE_S:-300} python3 - <<'PY' 2>&1 | grep -v "^Compiling" | tail -40
import os, time
t0 = time.time()
from stylexfer.backends.jittor import runtime
from pathlib import Path
import logging; logging.basicConfig(level=logging.INFO)
jt = runtime.jittor(Path("/tmp/jcache"), "cuda")
print("import", time.time() - t0, "use_cuda", jt.flags.use_cuda, flush=True)
import numpy as np
a = jt.array(np.random.randn(512, 512).astype(np.float32))
t1 = time.time(); b = (a @ a).numpy(); print("matmul ok", np.abs(b - a.numpy() @ a.numpy()).max(), time.time() - t1, flush=True)
c = jt.nn.Conv2d(4, 8, 3, padding=1); x = jt.array(np.random.randn(2, 4, 16, 16).astype(np.float32))
t1 = time.time(); y = c(x).numpy(); print("conv ok", y.shape, time.time() - t1, flush=True)
PY
fi
if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
[ -f /tmp/bbw/sd21-random/unet/config.json ] || timeout 200 python3 -c "
from pathlib import Path; from stylexfer.bench_backends import write_sd21_folder
import time; t=time.time(); write_sd21_folder(Path('.whl/sd21_architecture.json'), Path('/tmp/bbw/sd21-random')); print('wrote sd21 folder', time.time()-t)"
for B in ${BACKENDS:-jittor}; do
  if [ $B = jittor ]; then PP=$NP1; else PP=$PYTHONPATH; fi
  PYTHONPATH=$PP JT_SYNC=${JT_SYNC:-0} trace_py_var=${TRACE:-0} timeout ${BENCH_S:-400} python3 -m stylexfer.bench_backends --model-dir /tmp/bbw/sd21-random --work /tmp/bbw --out $OUT/bb-$B.json --backends $B --warm ${WARM:-2} --steps ${STEPS:-5} --parts ${PARTS:-sample,train} --res ${RES:-512} > $OUT/bench-$B.log 2>&1; echo rc=$?; grep -v -e Compiling -e SyntaxWarning $OUT/bench-$B.log | tail -30
done
fi
ls /tmp/jh/.cache/jittor 2>/dev/null | head
