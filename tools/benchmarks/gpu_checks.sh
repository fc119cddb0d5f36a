#!/usr/bin/env bash
# Every GPU figure the speed work asks for, in one run on a machine with one CUDA device: sample.py in
# float32, TF32 and bf16 (PSNR/SSIM, CUDA paths), the inference benchmark (128x128 and 512x512 LR), NCHW
# against channels_last, the complexity report, training throughput (fp32, --deterministic, --amp bf16,
# --amp fp16), the end-to-end benchmark, torch.compile, then the test suite on CUDA. Most wanted first;
# each step has a time limit, and a step that fails or overruns is reported and skipped, so one bad step
# does not cost the others.
#
#   tools/benchmarks/gpu_checks.sh [SHARED] [OUT]
#
# SHARED holds weights/DSRNet_x2_600000.pth, data/benchmark/{Set5,Set14} and HR photos under
# data/train/Sun-Hays80 (a handful is enough); default ../shared. OUT receives the markdown reports and
# log.txt; default results/. Reports are written as each step finishes, so a run cut short keeps them.
#
# On a lent GPU machine that receives only the repository (about 35 MB of data, under 64 MiB):
#   echo /gpu_data/ >> .git/info/exclude
#   mkdir -p gpu_data/weights gpu_data/data/benchmark gpu_data/data/train/Sun-Hays80
#   cp ../shared/weights/DSRNet_x2_600000.pth gpu_data/weights/
#   cp -r ../shared/data/benchmark/Set5 ../shared/data/benchmark/Set14 gpu_data/data/benchmark/
#   ls ../shared/data/train/Sun-Hays80/* | head -10 | xargs -I{} cp {} gpu_data/data/train/Sun-Hays80/
# then run `tools/benchmarks/gpu_checks.sh gpu_data "$OUT"` there, carrying gpu_data.
set -uo pipefail
shared=$(realpath -m "${1:-$(dirname "$0")/../../../shared}")
out=$(realpath -m "${2:-$(dirname "$0")/../../results}")
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
"$py" -c "import sys, torch; torch.cuda.is_available() or sys.exit('error: no CUDA device: run this on a GPU machine')" || exit 2
[ -f "$shared/weights/DSRNet_x2_600000.pth" ] || { echo "error: no $shared/weights/DSRNet_x2_600000.pth: pass the shared folder" >&2; exit 2; }
weights=$shared/weights/DSRNet_x2_600000.pth
sets=("$shared/data/benchmark/Set5" "$shared/data/benchmark/Set14")
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
failed=()

step() {  # step SECONDS COMMAND...: run with a time limit, note a failure and go on
    local limit=$1; shift
    echo; echo "== $* ($(date -u +%H:%M:%S))"
    timeout "$limit" "$@" || { echo "!! step failed or overran ${limit} s (exit $?): $*"; failed+=("$*"); }
}

step 60 "$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
step 120 "$py" sample.py --cuda --ckpt_path "$weights" --test_data_dir "${sets[@]}" --no_save
step 120 "$py" -m tools.benchmarks.inference --device cuda --ckpt_path "$weights" --rounds 50 --warmup 10 \
    --report "$out/speed_inference_cuda.md"
step 120 "$py" -m tools.benchmarks.memory_format --device cuda --report "$out/memory_format_cuda.md"
step 180 "$py" -m tools.benchmarks.complexity --device cuda --ckpt_path "$weights" --report "$out/complexity_cuda.md"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
h5=$tmp/photos.h5
step 120 "$py" dataset/div2h5.py --hr_dir "$shared/data/train/Sun-Hays80" --output "$h5"
step 240 "$py" -m tools.benchmarks.training --train_data_path "$h5" --scale 2 --batch_size 64 --patch_size 64 \
    --steps 100 --num_workers 4 --report "$out/speed_training_x2_cuda.md"
step 120 "$py" sample.py --cuda --ckpt_path "$weights" --test_data_dir "${sets[@]}" --no_save --tf32
step 120 "$py" sample.py --cuda --ckpt_path "$weights" --test_data_dir "${sets[@]}" --no_save --bf16
step 120 "$py" -m tools.benchmarks.inference --device cuda --ckpt_path "$weights" --size 512 --rounds 30 --warmup 5 \
    --report "$out/speed_inference_512_cuda.md"
step 180 "$py" -m tools.benchmarks.inference --device cuda --ckpt_path "$weights" --end_to_end "${sets[1]}" \
    --report "$out/speed_end_to_end_cuda.md"
step 240 "$py" -m tools.benchmarks.inference --device cuda --ckpt_path "$weights" --compile --rounds 50 --warmup 10 \
    --report "$out/speed_inference_compile_cuda.md"
[ -e ../shared ] || ln -s "$shared" ../shared  # the tests look for ../shared
parallel=()  # pytest-xdist where the machine has it: 8 workers of 2 threads each
"$py" -c "import xdist" 2>/dev/null && parallel=(-n 8)
step 600 env OMP_NUM_THREADS=2 "$py" -m pytest -q -p no:cacheprovider "${parallel[@]}"
echo
if [ ${#failed[@]} -gt 0 ]; then
    printf '!! failed: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed"
