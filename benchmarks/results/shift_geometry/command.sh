#!/bin/bash
# One-seed probe (not a result): the thyroid recipe with only AcquisitionAugment's geometric parts (depth zoom, black
# bars), tested in-domain and on `deep`. Run from the repository root.
set -e
out=benchmarks/results/shift_geometry
geometry=(--config configs/thyroid_cls.yaml --config configs/data/acquisition_augment.yaml
  --data.init_args.acquisition_augment.init_args.p_tgc 0 --data.init_args.acquisition_augment.init_args.p_gain 0
  --data.init_args.acquisition_augment.init_args.p_dynamic_range 0 --data.init_args.acquisition_augment.init_args.p_speckle 0
  --data.init_args.acquisition_augment.init_args.p_blur 0 --data.init_args.acquisition_augment.init_args.p_shadow 0
  --data.init_args.acquisition_augment.init_args.p_haze 0 --data.init_args.acquisition_augment.init_args.p_sector 0
  --seed_everything 1 --trainer.logger.init_args.save_dir "$out/run" --trainer.logger.init_args.name ""
  --trainer.logger.init_args.version "")
usvl fit "${geometry[@]}" > "$out/fit.log" 2>&1
ckpt=$(ls "$out"/run/checkpoints/epoch*.ckpt | head -1)
usvl test "${geometry[@]}" --data.init_args.test_acquisition deep --ckpt_path "$ckpt" > "$out/test_deep.log" 2>&1
