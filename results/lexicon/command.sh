#!/usr/bin/env bash
# Thyroid lexicon heads, seeds 1-3 (issue 14): two at a time, one thread each.
cd /work/main
run() { USVL_THREADS=1 taskset -c $2 .venv/bin/usvl fit --config configs/thyroid_lexicon.yaml --seed_everything $1 \
  --trainer.logger.init_args.save_dir results/lexicon --trainer.logger.init_args.name thyroid_lexicon \
  --trainer.logger.init_args.version seed$1 > /work/logs/lexicon_seed$1.log 2>&1; }
run 1 0 & run 2 1 & wait
run 3 0
