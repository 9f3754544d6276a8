#!/usr/bin/env bash
# Issue 11: the in-domain calibration of the shipped thyroid recipe measured on 1,700 fresh test patients instead of
# the 500-image test split. Each seed's best checkpoint of the shift grid's `shipped` cells (configs/shift/thyroid.yaml,
# the temperature, bias and threshold stored at fit) is tested, unchanged, on every image of the default profile
# generated with another generator seed (--data.init_args.test_seed 1 --data.init_args.test_split all: the same
# preset, acquisition and profile; new scenes).
set -euo pipefail
cd "$(dirname "$0")/../.."
for run in results/shift/thyroid/runs/thyroid_cls/shipped/all/seed*; do
  seed=$(basename "$run" | cut -d- -f1)
  USVL_THREADS=1 nice -n 5 .venv/bin/usvl test --config "$run/config.yaml" --ckpt_path "$(ls "$run"/checkpoints/epoch*.ckpt)" \
    --data.init_args.test_seed 1 --data.init_args.test_split all \
    --trainer.logger.init_args.save_dir results/calibration_fresh --trainer.logger.init_args.name thyroid_cls \
    --trainer.logger.init_args.version "$seed"
done
