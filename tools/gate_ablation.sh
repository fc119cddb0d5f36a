#!/usr/bin/env bash
# The gate ablation of results/gate_ablation.md (issue 12): fine-tuning from the authors' x2 weights with four
# gates, and training from scratch with 'selected' against 'learned' at two seeds; then every net on
# Set5/Set14/B100 with its own gate and with 'selected'. CPU, bf16 autocast (needs AVX512-BF16 or AMX).
#
#   tools/gate_ablation.sh OUT train-ft | train-scratch | eval-ft | eval-scratch | eval-base | activity
#
# Run from the repository root; everything is written under OUT (checkpoints, log.csv, reports, logs).
# FT_STEPS / SCRATCH_STEPS (environment) set the run lengths, SCRATCH_DECAY the from-scratch lr's halving
# period (default 1000, docs/training.md's 30-minute run), FT_SEEDS / SCRATCH_SEEDS the seeds (a fine-tuning
# run of seed 0 is named ft_<gate>, of seed k ft_<gate>_s<k>), FT_RECIPES which fine-tuning runs (of selected,
# sample, learned, learned_penalty); SHARED points at the reference material.
set -euo pipefail
OUT=${1:?usage: tools/gate_ablation.sh OUT STAGE}
STAGE=${2:?usage: tools/gate_ablation.sh OUT STAGE}
PY=${PY:-python}
SHARED=${SHARED:-../shared}
FT_STEPS=${FT_STEPS:-1500}
SCRATCH_STEPS=${SCRATCH_STEPS:-3000}
SCRATCH_DECAY=${SCRATCH_DECAY:-1000}
FT_SEEDS=${FT_SEEDS:-0}
SCRATCH_SEEDS=${SCRATCH_SEEDS:-0 1}
FT_RECIPES=${FT_RECIPES:-selected sample learned learned_penalty}
DATA=$OUT/photos80_x2.h5
WEIGHTS=$SHARED/weights/DSRNet_x2_600000.pth
BENCH=$SHARED/data/benchmark
mkdir -p "$OUT/eval"
[ -f "$DATA" ] || $PY dataset/div2h5.py --hr_dir "$SHARED/data/train/Sun-Hays80" --scales 2 --output "$DATA"

COMMON=(--train_data_path "$DATA" --amp bf16 --batch_size 16 --patch_size 32 --num_workers 1
        --log_interval 10 --verbose)
PENALTY=1e-4  # 10-15 % of the authors' fine-tuning loss when every patch takes 'fixed'; chosen, not tuned

train() {  # NAME ARGS...
  local name=$1; shift
  $PY x2/train.py "${COMMON[@]}" --ckpt_dir "$OUT/$name" --ckpt_name "$name" "$@"
}

evaluate() {  # NAME CHECKPOINT GATE
  $PY sample.py --ckpt_path "$2" --gate "$3" --test_data_dir "$BENCH/Set5" "$BENCH/Set14" "$BENCH/BSD100" \
      --bf16 --no_save --quiet --workers 1 --report "$OUT/eval/$1_$3.json"
}

ft_name() {  # RECIPE SEED
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1_s$2"; fi
}

case $STAGE in
  train-ft)
    ft=(--init_from "$WEIGHTS" --lr 1e-4 --decay "$FT_STEPS" --max_steps "$FT_STEPS" --print_interval "$FT_STEPS")
    declare -A how=([selected]="--gate selected" [sample]="--gate sample" [learned]="--gate learned --gate_lr_mult 100"
                    [learned_penalty]="--gate learned --gate_lr_mult 100 --gate_penalty $PENALTY")
    for seed in $FT_SEEDS; do
      for recipe in $FT_RECIPES; do
        # shellcheck disable=SC2086  # ${how[...]} holds several flags
        train "$(ft_name ft_$recipe $seed)" "${ft[@]}" --seed $seed ${how[$recipe]}
      done
    done ;;
  train-scratch)
    sc=(--lr 1e-3 --decay "$SCRATCH_DECAY" --max_steps "$SCRATCH_STEPS" --print_interval "$SCRATCH_STEPS")
    for seed in $SCRATCH_SEEDS; do
      train scratch_selected_s$seed "${sc[@]}" --seed $seed --gate selected
      train scratch_learned_s$seed "${sc[@]}" --seed $seed --gate learned --gate_lr_mult 10
    done ;;
  eval-ft)
    for seed in $FT_SEEDS; do
      for recipe in $FT_RECIPES; do
        name=$(ft_name ft_$recipe $seed); gate=${recipe%_penalty}
        evaluate "$name" "$OUT/$name/${name}_$FT_STEPS.pth" "$gate"
        [ "$gate" = selected ] || evaluate "$name" "$OUT/$name/${name}_$FT_STEPS.pth" selected
      done
    done ;;
  eval-scratch)
    for seed in $SCRATCH_SEEDS; do
      evaluate scratch_selected_s$seed "$OUT/scratch_selected_s$seed/scratch_selected_s${seed}_$SCRATCH_STEPS.pth" selected
      for gate in learned selected; do
        evaluate scratch_learned_s$seed "$OUT/scratch_learned_s$seed/scratch_learned_s${seed}_$SCRATCH_STEPS.pth" $gate
      done
    done ;;
  eval-base)
    for gate in selected learned; do evaluate authors "$WEIGHTS" $gate; done ;;
  activity)  # how loud each final net's branches are, and what swapping them changes, on Set5
    $PY -m tools.gate_activity "$WEIGHTS" "$OUT"/ft_*/ft_*_"$FT_STEPS".pth "$OUT"/scratch_*/scratch_*_"$SCRATCH_STEPS".pth \
        --test_data_dir "$BENCH/Set5" > "$OUT/activity.md" ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
