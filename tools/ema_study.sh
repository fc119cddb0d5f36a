#!/usr/bin/env bash
# The EMA study of results/ema_study.md: x2 fine-tuning from the authors' weights and x2 training
# from scratch, each with --ema 0.999 and --ema 0.99, then every final checkpoint on Set5/Set14 with its
# averaged weights and with its raw ones. EMA does not change the training trajectory (the average is never fed
# back), so the raw weights of either run are the "no EMA" result of that seed: one pair of runs per seed
# measures all three. CPU, bf16 autocast (needs AVX512-BF16 or AMX), as tools/gate_ablation.sh.
#
#   tools/ema_study.sh OUT train-ft | train-scratch | eval-ft | eval-scratch
#
# Run from the repository root; everything is written under OUT. FT_STEPS / SCRATCH_STEPS set the run lengths,
# SCRATCH_DECAY the from-scratch lr's halving period, SEEDS the seeds, DECAYS the EMA decays; SHARED points at
# the reference material. Each seed's runs of the different decays go in parallel (one thread each); PAR_SEEDS=1
# starts the runs of every seed at once.
set -euo pipefail
OUT=${1:?usage: tools/ema_study.sh OUT STAGE}
STAGE=${2:?usage: tools/ema_study.sh OUT STAGE}
PY=${PY:-python}
SHARED=${SHARED:-../shared}
FT_STEPS=${FT_STEPS:-1500}
SCRATCH_STEPS=${SCRATCH_STEPS:-3000}
SCRATCH_DECAY=${SCRATCH_DECAY:-1000}
SEEDS=${SEEDS:-0 1 2}
DECAYS=${DECAYS:-0.999 0.99}
DATA=$OUT/photos80_x2.h5
WEIGHTS=$SHARED/weights/DSRNet_x2_600000.pth
BENCH=$SHARED/data/benchmark
mkdir -p "$OUT/eval"
[ -f "$DATA" ] || $PY dataset/div2h5.py --hr_dir "$SHARED/data/train/Sun-Hays80" --scales 2 --output "$DATA"

COMMON=(--train_data_path "$DATA" --amp bf16 --batch_size 16 --patch_size 32 --num_workers 1 --gate selected
        --log_interval 50)

train_pairs() {  # PREFIX ARGS...: one run per decay and seed, the decays of a seed side by side (with
  local prefix=$1; shift  # PAR_SEEDS=1, every run at once)
  for seed in $SEEDS; do
    for decay in $DECAYS; do
      name=${prefix}_ema${decay#0.}_s$seed
      OMP_NUM_THREADS=1 $PY x2/train.py "${COMMON[@]}" --ckpt_dir "$OUT/$name" --ckpt_name "$name" \
          --seed "$seed" --ema "$decay" "$@" > "$OUT/$name.log" 2>&1 &
    done
    [ "${PAR_SEEDS:-0}" = 1 ] || wait
  done
  wait
}

evaluate() {  # PREFIX STEPS: each final checkpoint with its average and its raw weights
  for seed in $SEEDS; do
    for decay in $DECAYS; do
      name=${1}_ema${decay#0.}_s$seed
      for weights in ema raw; do
        $PY sample.py --ckpt_path "$OUT/$name/${name}_$2.pth" --weights $weights \
            --test_data_dir "$BENCH/Set5" "$BENCH/Set14" --bf16 --no_save --quiet --workers 1 \
            --report "$OUT/eval/${name}_$weights.json"
      done
    done
  done
}

case $STAGE in
  train-ft) train_pairs ft --init_from "$WEIGHTS" --lr 1e-4 --decay "$FT_STEPS" --max_steps "$FT_STEPS" \
                --print_interval "$FT_STEPS" ;;
  train-scratch) train_pairs scratch --lr 1e-3 --decay "$SCRATCH_DECAY" --max_steps "$SCRATCH_STEPS" \
                     --print_interval "$SCRATCH_STEPS" ;;
  eval-ft) evaluate ft "$FT_STEPS" ;;
  eval-scratch) evaluate scratch "$SCRATCH_STEPS" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
