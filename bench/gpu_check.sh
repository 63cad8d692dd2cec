#!/usr/bin/env bash
# GPU check (issue 17): one script, one table, under 5 minutes on one H100/H200-class GPU.
#
#   1. SmallResNet-18 training images/s: the plain loop ../shared/bench/plain_loop.py run
#      on the GPU by bench/plain_loop_cuda.py, and the trainer through sweep.py with
#      --device cuda --precision fp32|bf16, each without and with --compile;
#   2. 4 trials on one GPU at once (--gpus-per-trial 0.25): the most trials overlapping
#      in time, from trials.parquet's started_at/finished_at, with the timestamps;
#   3. a probe sweep (--mode probe, MLP depths 5,34, plain and residual): probes/s.
#   Then bench/gpu_check_table.py prints the table (also OUT/table.md).
#
# Sizes on the GPU (chosen for < 5 min on an H200 with every Ray start-up, the results
# and reports each sweep writes, and two torch.compile runs; NOT yet timed on a GPU):
#   plain loop       8 epochs x 5,085 images (all of the subset; the loop cannot take less)
#   trainer arms     8 epochs x 4,992 images (--subset 4992 --val-fraction 0: 39 full
#                    batches of 128, so the compiled step never recompiles for a short
#                    last batch), test 1,017 images each epoch, --stats-every 0 (the
#                    plain loop records no statistics, and with them on the compiled step
#                    is compiled twice: the recorder's hooks switch on and off)
#   4 trials at once 10 epochs x 4,992 images each, --gpus-per-trial 0.25, precision auto
#   probe            MLP (seed_mlp family) depths 5,34 x plain/residual x 250 seeds = 1,000
# Order: plain, fp32, bf16, 4-at-once, probe, then the two compiled arms (the slowest,
# last: a time-out there still leaves the rest). Each step is stopped after
# GPU_CHECK_STEP_TIMEOUT s (default 240) with SIGINT, so Ray shuts down cleanly.
# Every sweep: --wandb disabled --measure none --keep-weights none --max-failures 0.
#
# usage: bench/gpu_check.sh [--cpu-smoke] [--data DIR] [--out DIR]
#   --data DIR   holds cifar-10-batches-py/ (default $GPU_CHECK_DATA, else
#                ../shared/data/cifar10-subset beside the repository)
#   --out DIR    where logs, results and table.md go (default $GPU_CHECK_OUT, else
#                bench/out/gpu-check-<time>)
#   --cpu-smoke  (or GPU_CHECK_DEVICE=cpu) the same steps on the CPU with tiny sizes, to
#                test the mechanics on a machine without a GPU: plain loop 2 epochs;
#                trainer fp32/bf16 2 epochs x 256 images (compiled arms skipped unless
#                GPU_CHECK_COMPILE=1: compiling takes minutes on 2 cores); 4 trials x
#                2 epochs x 512 images at --cpus-per-trial 0.5; probe 10 seeds.
#   Sizes can be overridden: GPU_CHECK_{PLAIN_EPOCHS,TRAIN_EPOCHS,TRAIN_SUBSET,
#   CONC_EPOCHS,CONC_SUBSET,PROBE_SEEDS}. PYTHON picks the interpreter (default: the
#   repository's .venv if there is one, else python3). GPU_CHECK_PLAIN_LOOP: the loop's
#   path (default ../shared/bench/plain_loop.py beside the repository).
#   Needs Ray (parts 1-3 run sweep.py); the plain loop alone needs only torch.
set -uo pipefail

STARTED_AT=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA=${GPU_CHECK_DATA:-$ROOT/../shared/data/cifar10-subset}
OUT=${GPU_CHECK_OUT:-$ROOT/bench/out/gpu-check-$(date +%Y%m%d-%H%M%S)}
while (($#)); do
  case $1 in
    --cpu-smoke) DEVICE=cpu ;;
    --data) (($# > 1)) || die "--data needs a folder"; DATA=$2; shift ;;
    --out) (($# > 1)) || die "--out needs a folder"; OUT=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; valid: --cpu-smoke, --data DIR, --out DIR, --help" ;;
  esac
  shift
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || die "GPU_CHECK_DEVICE=$DEVICE; valid: cuda, cpu"
LOOP=${GPU_CHECK_PLAIN_LOOP:-$ROOT/../shared/bench/plain_loop.py}
[[ -f $LOOP ]] || die "no plain loop at $LOOP; set GPU_CHECK_PLAIN_LOOP=PATH to ../shared/bench/plain_loop.py (or a copy of it)"
BATCHES=$DATA/cifar-10-batches-py
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  [[ -f $BATCHES/$f ]] || die "no CIFAR-10 batch $BATCHES/$f; give --data DIR (or GPU_CHECK_DATA) holding cifar-10-batches-py/"
done
# absolute: the steps run from the repository's root
DATA=$(cd "$DATA" && pwd) BATCHES=$(cd "$BATCHES" && pwd) LOOP=$(realpath "$LOOP")
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $ROOT/.venv/bin/python ]] && PYTHON=$ROOT/.venv/bin/python
fi

"$PYTHON" -c "import ray.tune, pandas, pyarrow" 2>/dev/null \
  || die "$PYTHON cannot import ray[tune], pandas and pyarrow (sweep.py needs them); set PYTHON=..."
if [[ $DEVICE == cuda ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch sees no CUDA device; run on a GPU machine, or use --cpu-smoke"
  PLAIN_EPOCHS=${GPU_CHECK_PLAIN_EPOCHS:-8}
  TRAIN_EPOCHS=${GPU_CHECK_TRAIN_EPOCHS:-8} TRAIN_SUBSET=${GPU_CHECK_TRAIN_SUBSET:-4992}
  CONC_EPOCHS=${GPU_CHECK_CONC_EPOCHS:-10} CONC_SUBSET=${GPU_CHECK_CONC_SUBSET:-4992}
  PROBE_SEEDS=${GPU_CHECK_PROBE_SEEDS:-250}
  ONE=(--gpus-per-trial 1) SHARE=(--gpus-per-trial 0.25)
  COMPILE=${GPU_CHECK_COMPILE:-1}
else
  PLAIN_EPOCHS=${GPU_CHECK_PLAIN_EPOCHS:-2}
  TRAIN_EPOCHS=${GPU_CHECK_TRAIN_EPOCHS:-2} TRAIN_SUBSET=${GPU_CHECK_TRAIN_SUBSET:-256}
  CONC_EPOCHS=${GPU_CHECK_CONC_EPOCHS:-2} CONC_SUBSET=${GPU_CHECK_CONC_SUBSET:-512}
  PROBE_SEEDS=${GPU_CHECK_PROBE_SEEDS:-10}
  ONE=(--gpus-per-trial 0) SHARE=(--gpus-per-trial 0 --cpus-per-trial 0.5)
  COMPILE=${GPU_CHECK_COMPILE:-0}
fi
STEP_TIMEOUT=${GPU_CHECK_STEP_TIMEOUT:-240}

mkdir -p "$OUT/runs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.tsv"
cd "$ROOT" || exit 2
echo "gpu_check: device $DEVICE, data $DATA, out $OUT, python $PYTHON" \
     "(each step's output: OUT/<step>.log)"

# step NAME CMD...: run CMD with its output in OUT/NAME.log; record exit code and times
step() {
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -s INT -k 30 "$STEP_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$t0" "$t1" >> "$OUT/steps.tsv"
  printf 'gpu_check: %-20s exit %s in %.0f s\n' "$name" "$rc" "$(awk "BEGIN { print $t1 - $t0 }")"
}
skip() { printf '%s\t-1\t%s\t%s\n' "$1" "$(date +%s.%N)" "$(date +%s.%N)" >> "$OUT/steps.tsv"; }

sweep() {  # sweep NAME FLAGS...: one sweep.py run into OUT/runs/NAME
  local name=$1; shift
  step "$name" "$PYTHON" sweep.py --out "$OUT/runs" --name "$name" --wandb disabled \
    --measure none --keep-weights none --max-failures 0 "$@"
}
TRAIN=(--models small_resnet18 --residual on --mode train --data-root "$DATA"
       --val-fraction 0 --device "$DEVICE")
ARM=("${TRAIN[@]}" --epochs "$TRAIN_EPOCHS" --subset "$TRAIN_SUBSET" --stats-every 0 "${ONE[@]}")

step plain "$PYTHON" bench/plain_loop_cuda.py --device "$DEVICE" --script "$LOOP" "$BATCHES" \
  "$PLAIN_EPOCHS"
sweep train-fp32 "${ARM[@]}" --precision fp32
sweep train-bf16 "${ARM[@]}" --precision bf16
sweep concurrent "${TRAIN[@]}" --seeds 4 --epochs "$CONC_EPOCHS" --subset "$CONC_SUBSET" \
  "${SHARE[@]}"
sweep probe --families mlp --depths 5,34 --residual both --mode probe --seeds "$PROBE_SEEDS"
for p in fp32 bf16; do
  if [[ $COMPILE == 1 ]]; then
    sweep "train-$p-compile" "${ARM[@]}" --precision "$p" --compile
  else
    skip "train-$p-compile"
  fi
done

echo
"$PYTHON" bench/gpu_check_table.py "$OUT" --limit-s 300 --started-at "$STARTED_AT" || exit 2
# exit 1 when a step failed (the table names it and its log)
! awk -F'\t' '$2 != 0 && $2 != -1 { bad = 1 } END { exit !bad }' "$OUT/steps.tsv"
