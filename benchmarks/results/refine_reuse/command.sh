#!/usr/bin/env bash
# Two identical fits of a config with a refiner: the first refines (LLM) and encodes, the second reads both caches.
set -euo pipefail
cd /work/main
export USVL_CACHE=/work/llm/demo-cache
rm -rf "$USVL_CACHE" /work/llm/demo-runs
for attempt in 1 2; do
  /usr/bin/time -f "wall %e s" env OMP_NUM_THREADS=1 .venv/bin/usvl fit --config configs/thyroid_cls.yaml \
    --text.refiner configs/text/refiners/qwen2.5-coder-0.5b-instruct-gguf.yaml \
    --data.init_args.profile tiny --trainer.max_epochs 2 \
    --trainer.logger.init_args.save_dir /work/llm/demo-runs > /work/logs/reuse_demo_$attempt.log 2>&1
done
echo DEMODONE
