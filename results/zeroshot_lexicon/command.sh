#!/usr/bin/env bash
# Zero-shot ACR TI-RADS descriptors on the thyroid twin (issue 14): stage 1 (seed 0, configs/pretrain_thyroid.yaml),
# then `usvl test` of configs/zeroshot/thyroid_lexicon.yaml from its best checkpoint in each prompt mode, and with
# random projections (no stage 1) as the chance reference. One thread each, beside the breast shift grid.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/zeroshot_lexicon
USVL_THREADS=1 .venv/bin/usvl fit --config configs/pretrain_thyroid.yaml --trainer.logger.init_args.save_dir /work/runs
CK=$(ls /work/runs/pretrain_thyroid/version_0/checkpoints/epoch*.ckpt)
zeroshot() {  # version, extra arguments
  USVL_THREADS=1 .venv/bin/usvl test --config configs/zeroshot/thyroid_lexicon.yaml \
    --trainer.logger.init_args.save_dir $OUT --trainer.logger.init_args.version "$@"
}
zeroshot no_stage1
zeroshot caption_exclusive --model.init_args.init_from $CK
zeroshot caption_pairwise --model.init_args.init_from $CK --model.init_args.multi_label pairwise
zeroshot phrase_exclusive --model.init_args.init_from $CK --model.init_args.prompts phrase
zeroshot phrase_pairwise --model.init_args.init_from $CK --model.init_args.prompts phrase --model.init_args.multi_label pairwise
