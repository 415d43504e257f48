#!/usr/bin/env bash
# Every GPU check and benchmark of the project in ONE call, for a session lent a GPU for minutes.
# Run from the repo root on the GPU machine; results go to $OUT (default out/gpu):
#   OUT=out/gpu bash gpu_check.sh
# The GPU image has torch but not every package of requirements.txt: wheels for the missing ones
# (soundfile, cffi, pycparser, imageio-ffmpeg) may be carried in .gpu_wheels/ and are installed first.
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
[ -d .gpu_wheels ] && python3 -m pip install -q --no-index --no-deps .gpu_wheels/*.whl 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step() {  # step NAME SECONDS CMD...: run with a time limit, keep the log, print its tail
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - t0)) s"; tr '\r' '\n' < "$OUT/$name.log" | grep -v 'it/s]$' | tail -4
}
# 1. The CUDA code paths at tiny: torchrun (nccl) DDP, bf16 autocast, fused AdamW, compile, sampling.
step train_ae 60 torchrun --standalone --nproc_per_node 1 train.py --stage ae --max_steps 100 \
  --out_dir "$OUT/run" --log_every 50 --preview_every 0 --num_workers 6
step train_dit 90 python3 train.py --stage dit --max_steps 100 --out_dir "$OUT/run" --train_clips 1024 \
  --log_every 50 --preview_every 0 --num_workers 6 --compile true
step sample 40 python3 sample.py --out_dir "$OUT/run" --n 8
# sample.py's default V2A path: the video of a joint sample just written given, its audio drawn anew
cp "$OUT/run/samples/000.mp4" "$OUT/cond.mp4" 2>/dev/null
step sample_v2a 40 python3 sample.py --out_dir "$OUT/run" --n 4 --mode v2a --cond "$OUT/cond.mp4"
# 2. Costs and speed at both presets, bf16 eager: the default run's training FLOPs; timed training steps
#    and sampling as sample.py samples (its default joint and V2A clips, and 50 first-order steps: DDIM
#    for DDPM at `paper`, Euler for rectified flow at `tiny`); at `paper` also the flash-attention check,
#    one clip's denoiser calls with the default sampling against DDIM-50, and the default's sampling
#    forward compiled (bench.gpu_sampling_checks).
step bench 360 python3 bench.py --device cuda --repeats 3 --out_dir "$OUT/bench_gpu"
cat "$OUT"/bench_gpu/bench.md
# 3. Memory of one training step per stage, preset and batch (1, 4, 16), with and without --grad_checkpoint:
#    CUDA max_memory_allocated beside the saved-for-backward count; then checkpointing's cost in step time
#    (memory.py, through bench.py --memory true; the FLOP and tiny tables it also prints are cheap).
step memory 240 python3 bench.py --device cuda --memory true --presets tiny --timed tiny --repeats 3 \
  --out_dir "$OUT/bench_memory"
sed -n '/^Memory of one training step/,$p' "$OUT"/bench_memory/bench.md
