#!/usr/bin/env bash
# Zero-shot ACR TI-RADS descriptors on the thyroid twin (issue 14): stage 1 (configs/pretrain_thyroid.yaml, seeds 0-2;
# seed 0 ran as version_0 without --seed_everything, whose default is 0), then `usvl test` of
# configs/zeroshot/thyroid_lexicon.yaml from each best stage-1 checkpoint in each prompt setting, and once with random
# projections (no stage 1) as the chance reference; then the table (table.md). One thread each, beside other jobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/zeroshot_lexicon
for seed in 0 1 2; do
  USVL_THREADS=1 .venv/bin/usvl fit --config configs/pretrain_thyroid.yaml --seed_everything $seed \
    --trainer.logger.init_args.save_dir /work/runs --trainer.logger.init_args.version seed$seed
done
zeroshot() {  # version, extra arguments
  USVL_THREADS=1 .venv/bin/usvl test --config configs/zeroshot/thyroid_lexicon.yaml \
    --trainer.logger.init_args.save_dir $OUT --trainer.logger.init_args.version "$@"
}
zeroshot no_stage1
for seed in 0 1 2; do
  CK=$(ls /work/runs/pretrain_thyroid/seed$seed/checkpoints/epoch*.ckpt)
  zeroshot caption_exclusive_seed$seed --model.init_args.init_from $CK
  zeroshot caption_pairwise_seed$seed --model.init_args.init_from $CK --model.init_args.multi_label pairwise
  zeroshot phrase_exclusive_seed$seed --model.init_args.init_from $CK --model.init_args.prompts phrase
  zeroshot phrase_pairwise_seed$seed --model.init_args.init_from $CK --model.init_args.prompts phrase \
    --model.init_args.multi_label pairwise
done
.venv/bin/python benchmarks/zeroshot_lexicon_table.py $OUT/zeroshot_thyroid_lexicon

# BI-RADS on the breast twin: stage 1 seed 0 (configs/pretrain_breast.yaml, run as version_0), the default setting.
USVL_THREADS=1 .venv/bin/usvl fit --config configs/pretrain_breast.yaml --trainer.logger.init_args.save_dir /work/runs
CK=$(ls /work/runs/pretrain_breast/version_0/checkpoints/epoch*.ckpt)
breast() {  # version, extra arguments
  USVL_THREADS=1 .venv/bin/usvl test --config configs/zeroshot/breast_lexicon.yaml \
    --trainer.logger.init_args.save_dir $OUT --trainer.logger.init_args.version "$@"
}
breast no_stage1
breast caption_exclusive_seed0 --model.init_args.init_from $CK
.venv/bin/python benchmarks/zeroshot_lexicon_table.py $OUT/zeroshot_breast_lexicon
