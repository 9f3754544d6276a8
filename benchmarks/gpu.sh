#!/usr/bin/env bash
# Training throughput on a lent GPU (written for one H200): the ViT-B/16-sized random encoder with Mona-hybrid and
# with LoRA in bf16 at batch 32 and 64, the same at 384 and 512 px, and the embedded encoder (the adapter table and
# the image-size / batch-size grid); images/s, peak memory and MFU per case (benchmarks/train_throughput.py).
#
# Run from anywhere, on a machine with the repository's .venv already built (it installs nothing and needs no
# network): `bash benchmarks/gpu.sh`. It finishes in under 8 minutes: every step runs under `timeout` (405 s in all,
# plus 5 s to kill each hung step), and a step that fails or hangs is reported and skipped. JSON records go to "${OUT:-benchmarks/results}"; the exit status is
# the number of failed steps.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under `timeout SECONDS`; count a failure or a timeout and go on.
step() {
  local name="$1" seconds="$2"
  shift 2
  echo "=== ${name} (at most ${seconds} s) ==="
  local start=$SECONDS status=0
  timeout --kill-after=5 "$seconds" "$@" || status=$?
  if ((status != 0)); then
    echo "=== ${name}: FAILED (exit ${status}; 124 = timed out) ==="
    failed=$((failed + 1))
  else
    echo "=== ${name}: done in $((SECONDS - start)) s ==="
  fi
}

throughput=("$PYTHON" benchmarks/train_throughput.py --device cuda --precision bf16 --warmup 3 --repeats 20)

step "nvidia-smi" 10 nvidia-smi
step "torch.cuda" 30 "$PYTHON" -c '
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
properties = torch.cuda.get_device_properties(0)
print(torch.cuda.get_device_name(0), f"capability {properties.major}.{properties.minor}",
      f"{properties.total_memory / 2**30:.1f} GiB", f"{properties.multi_processor_count} SMs",
      "bf16", torch.cuda.is_bf16_supported())
'
step "ViT-B/16 Mona-hybrid and LoRA, 224 px, batch 32 and 64" 100 \
  "${throughput[@]}" --cases vit --sizes 224 --batch 32 64 --output "$OUT/train_throughput_gpu_vit.json"
step "ViT-B/16 Mona-hybrid and LoRA, 384 and 512 px, batch 32" 75 \
  "${throughput[@]}" --cases vit --sizes 384 512 --batch 32 --output "$OUT/train_throughput_gpu_vit_sizes.json"
step "embedded encoder, adapter table, batch 32 and 64" 100 \
  "${throughput[@]}" --cases table --sizes 224 --batch 32 64 --output "$OUT/train_throughput_gpu_embedded.json"
step "embedded encoder, image-size and batch-size grid" 90 \
  "${throughput[@]}" --cases scaling --output "$OUT/train_throughput_gpu_scaling.json"

echo "failed steps: ${failed}"
exit "$failed"
