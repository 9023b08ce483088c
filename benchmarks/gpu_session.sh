#!/usr/bin/env bash
# One GPU session's measurements (issues 11 and 15), in order of value, each stage bounded so the whole
# fits one device call. Run from the repository root of a copy of the tree on an H100/H200, with the
# Fashion-MNIST files in .gpu_data/ (copied from /usr/share/datasets/fashion-mnist) and $OUT a folder:
#
#   OUT=/tmp/gpu BUDGET_S=540 bash benchmarks/gpu_session.sh
#
# Stages (each writes one file under $OUT; a stage cut by the deadline leaves what it printed):
#   1. env.txt               GPU, driver, torch, triton, timm
#   2. gpu_ops_check.md      the fused kernels vs float64 on CUDA at network sizes (benchmarks/gpu_ops_check.py)
#   3. gpu_overhead_eager.md resnet50 vs apply(resnet50) kernels=triton/torch vs seresnet50, eager, + block end
#   4. trainer_one.txt       one ResNet-20 Fashion-MNIST run: GPU path (on-device data + CUDA graphs) vs DataLoader
#   5. gpu_overhead_compiled.md  the training step under torch.compile
#   6. share.txt             12 ResNet-20 runs sharing the GPU (benchmarks/configs/fashion_mnist_gpu_share.yaml)
# Issue 26 (stacked runs, the whole step as one CUDA graph, the SE study) has its own call: gpu_stack_session.sh.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a folder}
BUDGET_S=${BUDGET_S:-540}
PY=${PY:-python3}
START=$(date +%s)
mkdir -p "$OUT"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/session.log"; }
# run STAGE_TIMEOUT FILE CMD...: at most STAGE_TIMEOUT seconds and never past the budget
stage() {
  local want=$1 file=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) - 5 ))
  local limit=$(( want < left ? want : left ))
  if (( limit < 20 )); then log "skip $file: ${left}s left"; echo "not run: the session's budget was spent" >"$OUT/$file"; return; fi
  log "start $file (limit ${limit}s): $*"
  timeout -s TERM -k 10 "$limit" "$@" >"$OUT/$file.part" 2>&1
  local rc=$?
  log "end $file rc=$rc"
  { cat "$OUT/$file.part"; echo; echo "(exit $rc after at most ${limit}s)"; } >"$OUT/$file"; rm -f "$OUT/$file.part"
}

# 0. the data where the recipe looks for it
if [ -d .gpu_data ]; then mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/*.gz /usr/share/datasets/fashion-mnist/; fi

# 1. the stack
stage 30 env.txt bash -c "nvidia-smi; $PY -c 'import torch, triton, timm, platform; import se_inject, se_inject.ops; print(\"se_inject ok\"); print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"timm\", timm.__version__, \"python\", platform.python_version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))'; nproc; free -g"

# 2. correctness of the kernels on the GPU
stage 120 gpu_ops_check.md $PY benchmarks/gpu_ops_check.py

# 3. issue 11, eager: training step, inference, block end
stage 170 gpu_overhead_eager.md $PY benchmarks/gpu_overhead.py --modes train-eager,infer-eager --rounds 8

# 4. issue 15: one ResNet-20 run, GPU path then DataLoader path (epochs 1-2 are steady; epoch 0 compiles)
TRAIN="$PY -m trainers.train --config fashion-mnist --set run.progress=false --set run.amp=bf16 --set run.channels_last=true"
stage 150 trainer_one.txt bash -c "
  $TRAIN --set run.epochs=3 --set data.on_device=true --set run.cuda_graphs=true --set run.out_dir=runs/gpu-one-fast;
  echo; echo '== DataLoader path';
  $TRAIN --set run.epochs=2 --set data.workers=6 --set run.out_dir=runs/gpu-one-loader;
  echo; for d in runs/gpu-one-fast runs/gpu-one-loader; do echo \"== \$d/metrics.csv\"; cat \$d/metrics.csv; done"

# 5. issue 11, compiled training step (resnet50 and apply(resnet50, kernels=triton): two compiles)
stage 170 gpu_overhead_compiled.md $PY benchmarks/gpu_overhead.py --modes train-compiled --models fused \
  --rounds 6 --micro-shapes ''

# 6. issue 15: twelve runs sharing the GPU
stage 200 share.txt bash -c "
  $PY -m trainers.compare --config benchmarks/configs/fashion_mnist_gpu_share.yaml --out runs/share;
  for f in runs/share/*/*/*/metrics.csv; do echo \"== \$f\"; cat \$f; done"

log "done"
