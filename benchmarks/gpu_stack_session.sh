#!/usr/bin/env bash
# Issue 26 in one device call: where a ResNet-20 step's time goes, the stacked runs' img/s against one run and
# against separate processes, then the SE study of examples/fashion_mnist_gpu.yaml with the time left.
# Run from the repository root of a copy of the tree on an H100/H200, with the Fashion-MNIST files in .gpu_data/
# (here: mkdir .gpu_data && cp /usr/share/datasets/fashion-mnist/*.gz .gpu_data/ && echo /.gpu_data/ >> .git/info/exclude;
# the device call carries .gpu_data) and $OUT a folder:
#
#   OUT=$OUT BUDGET_S=540 bash benchmarks/gpu_stack_session.sh          # one call of the device tool, timeout_s 600
#   OUT=$OUT BUDGET_S=540 STAGES=study bash benchmarks/gpu_stack_session.sh   # at once after it: the study goes on
#   SMOKE=1 OUT=/tmp/smoke bash benchmarks/gpu_stack_session.sh          # on the CPU, tiny: every stage's code runs
#
# Stages (STAGES picks some; each writes its file under $OUT; a stage cut by the deadline leaves what it printed):
#   env        env.txt              GPU, driver, torch, timm
#   profile    step_profile.md      torch.profiler tables: the trainer's step vs the stacked step of one run (one graph)
#   throughput stack_throughput.md  one run, 16 stacked runs, the same 16 runs as 16 processes: img/s and ratios
#   study      study.txt, study_report.md, study_results.csv   the comparison (resumable: checkpoints stay in runs/,
#                                   which a warm machine keeps between calls; the same command again continues it);
#                                   study_report.txt when the comparison was cut off and its report rebuilt
# The study gets what the budget leaves after the other stages, minus 40 s for its report; on timeout every
# stacked group checkpoints (SIGTERM) and the report shows what finished.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to a folder}
BUDGET_S=${BUDGET_S:-540}
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
STAGES=${STAGES:-env profile throughput study}
START=$(date +%s)
mkdir -p "$OUT"
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/session.log"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) - 5 )); }
# stage STAGE_TIMEOUT FILE CMD...: at most STAGE_TIMEOUT seconds and never past the budget
stage() {
  local want=$1 file=$2; shift 2
  local l; l=$(left)
  local limit=$(( want < l ? want : l ))
  if (( limit < 20 )); then log "skip $file: ${l}s left"; echo "not run: the session's budget was spent" >"$OUT/$file"; return; fi
  log "start $file (limit ${limit}s): $*"
  timeout -s TERM -k 15 "$limit" "$@" >"$OUT/$file.part" 2>&1
  local rc=$?
  LAST_RC=$rc
  log "end $file rc=$rc"
  { cat "$OUT/$file.part"; echo; echo "(exit $rc after at most ${limit}s)"; } >"$OUT/$file"; rm -f "$OUT/$file.part"
}
want() { [[ " $STAGES " == *" $1 "* ]]; }

STUDY=examples/fashion_mnist_gpu.yaml
STUDY_OUT=runs/compare/fashion-mnist-gpu
SMOKE_FLAG=""
if [ "$SMOKE" = 1 ]; then
  SMOKE_FLAG="--smoke"
  STUDY_OUT="$OUT/smoke-study"
  # the real study's file, shrunk: one small backbone, 2 seeds, a few batches, stacked by 2 on the CPU
  STUDY="$OUT/smoke_study.yaml"
  $PY - "$STUDY" <<'EOF'
import sys, yaml
spec = yaml.safe_load(open("examples/fashion_mnist_gpu.yaml"))
spec["set"].update({"run.epochs": 1, "data.limit_train_batches": 2, "data.limit_val_batches": 1, "data.batch_size": 8,
                    "data.eval_batch_size": 64, "run.device": "cpu", "run.amp": "none", "run.cuda_graphs": False})
spec.update(backbones=["cifar_resnet8"], seeds=[0, 1], launch={"parallel": 3, "stack": 2})
yaml.safe_dump(spec, open(sys.argv[1], "w"), sort_keys=False)
EOF
elif [ -d .gpu_data ]; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/*.gz /usr/share/datasets/fashion-mnist/
fi

if want env; then
  stage 30 env.txt bash -c "nvidia-smi || true; $PY -c 'import torch, timm, platform; import se_inject, trainers.stack; print(\"torch\", torch.__version__, \"timm\", timm.__version__, \"python\", platform.python_version()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'; nproc; free -g"
fi
if want profile; then
  stage 120 step_profile.md $PY benchmarks/step_profile.py $SMOKE_FLAG --out "$OUT/step_profile.table.md"
fi
if want throughput; then
  stage 150 stack_throughput.md $PY benchmarks/stack_throughput.py $SMOKE_FLAG --duration 10 --out "$OUT/stack_throughput.table.md"
fi
if want study; then
  l=$(left)
  stage $(( l - 40 )) study.txt $PY -m trainers.compare --config "$STUDY" --out "$STUDY_OUT"
  # cut off (or a run failed): the report of what finished, from the runs' folders
  if [ "${LAST_RC:-1}" != 0 ]; then stage 40 study_report.txt $PY -m se_inject_cli report "$STUDY_OUT" --no-latency; fi
  cp "$STUDY_OUT/report.md" "$OUT/study_report.md" 2>/dev/null || true
  cp "$STUDY_OUT/results.csv" "$OUT/study_results.csv" 2>/dev/null || true
fi
# the tables themselves, not the stages' logs, are what a results file quotes
for f in step_profile stack_throughput; do [ -f "$OUT/$f.table.md" ] && mv "$OUT/$f.table.md" "$OUT/$f.md"; done
log "done"
