"""Stage 1: InfoNCE, what trains, retrieval recall, caption data, and the stage-1 -> stage-2 hand-off (init_from)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from PIL import Image
from shipped_configs import CONFIGS, smoke

from usvl.cli import USVLCLI, run_lightning
from usvl.data.captions import CaptionCSVDataModule, SyntheticCaptionDataModule, read_caption_csv
from usvl.metrics import RetrievalRecall, caption_ids, retrieval_recall
from usvl.models.adapters import MonaAdapter
from usvl.models.encoders import TinyViTCLIP
from usvl.tasks import ContrastiveTask
from usvl.tasks.contrastive import info_nce
from usvl.tasks.init_from import InitFromError, select_weights


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def test_info_nce_matches_a_hand_computed_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.6, 0.8]])  # normalised inside: [1, 0] and [0.6, 0.8]
    # cosine logits (scale 2): rows = images [[2, 1.2], [0, 1.6]]; columns = texts [[2, 0], [1.2, 1.6]]
    expected_i2t = (_ce([2.0, 1.2], 0) + _ce([0.0, 1.6], 1)) / 2
    expected_t2i = (_ce([2.0, 0.0], 0) + _ce([1.2, 1.6], 1)) / 2
    loss = info_nce(image, text, 2.0)
    assert loss.item() == pytest.approx((expected_i2t + expected_t2i) / 2, abs=1e-6)
    # Two pairs sharing a caption are positives of each other: the target is uniform over them.
    same = info_nce(image, text, 2.0, ids=torch.tensor([7, 7]))
    row = [[2.0, 1.2], [0.0, 1.6]]
    column = [[2.0, 0.0], [1.2, 1.6]]
    half = [sum(0.5 * _ce(r, j) for j in range(2)) for r in row] + [sum(0.5 * _ce(c, j) for j in range(2))
                                                                   for c in column]
    assert same.item() == pytest.approx(sum(half) / 4, abs=1e-6)
    assert info_nce(image, text, 2.0, ids=torch.tensor([1, 2])).item() == pytest.approx(loss.item())


def _tiny_task(**kwargs) -> ContrastiveTask:
    encoder = TinyViTCLIP(depth=2, feature_taps=(1,))
    return ContrastiveTask(encoder, num_classes=2, class_names=["benign", "malignant"],
                           adapter=MonaAdapter(bottleneck=8, **kwargs), channels_last=False)


def test_gradient_reaches_adapters_projections_and_temperature_not_the_towers():
    torch.manual_seed(0)
    task = _tiny_task()
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    batch = {"image": images, "caption": ["a solid nodule", "a cyst", "a solid nodule"],
             "label": torch.tensor([1, 0, 1])}
    task.compute_step(batch, "train").loss.backward()
    trainable = {name: p for name, p in task.named_parameters() if p.requires_grad}
    assert {"logit_scale"} <= set(trainable)
    assert any(".adapter." in name for name in trainable)
    assert any(name.startswith("encoder.image_projection") for name in trainable)
    assert any(name.startswith("encoder.text_projection") for name in trainable)
    assert all(not name.startswith(("encoder.image_tower", "encoder.text")) or ".adapter." in name
               for name in trainable if "projection" not in name)
    assert all(parameter.grad is not None for parameter in trainable.values())
    moving = {name for name, parameter in trainable.items() if parameter.grad.abs().sum() > 0}
    # (a zero-initialised adapter output layer gives its inputs a zero gradient at the first step)
    assert {"logit_scale", "encoder.text_projection.weight"} <= moving
    assert any(".adapter." in name for name in moving) and any("image_projection" in name for name in moving)
    frozen = [p for name, p in task.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert len(task.caption_embeddings) == 2  # each distinct caption encoded once
    task.check_gradients(64)


def test_fixed_temperature_does_not_train():
    task = _tiny_task()
    fixed = ContrastiveTask(task.encoder, num_classes=0, learnable_temperature=False, temperature=0.05,
                            channels_last=False)
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert fixed.scale().item() == pytest.approx(20.0)
    assert "logit_scale" in fixed.trainable_state_keys()


def test_retrieval_recall_on_a_constructed_case():
    # Three images; images 0 and 1 share caption A, image 2 has caption B.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # A, A, B
    ids = torch.tensor([5, 5, 9])
    scores = retrieval_recall(images, texts, ids, ks=(1, 2))
    # image->text over the distinct captions {A, B}: image 0 -> A first (right), image 1 -> B first (wrong, A 2nd),
    # image 2 -> A first (wrong, B 2nd)
    assert scores["i2t_r1"].item() == pytest.approx(1 / 3)
    assert scores["i2t_r2"].item() == pytest.approx(1.0)
    # text->image: A ranks its image 0 first (right at 1); B ranks image 1 (A's) first and its own image 2 second
    assert scores["t2i_r1"].item() == pytest.approx(0.5)
    assert scores["t2i_r2"].item() == pytest.approx(1.0)
    metric = RetrievalRecall(ks=(1, 2))
    metric.update(images[:2], texts[:2], ids[:2])
    metric.update(images[2:], texts[2:], ids[2:])
    assert metric.compute()["i2t_r1"].item() == pytest.approx(1 / 3)
    assert torch.equal(caption_ids(["a", "b", "a"])[[0, 2]], caption_ids(["a", "a"]))


def _write_caption_csv(folder, rows: list[str], header: str = "image_path,caption,split"):
    (folder / "img").mkdir(exist_ok=True)
    for index in range(6):
        array = np.full((32, 32), 40 * index, dtype=np.uint8)
        Image.fromarray(array).save(folder / "img" / f"{index}.png")
    path = folder / "captions.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_caption_csv_dataset(tmp_path):
    rows = ['img/0.png,"A solid, hypoechoic nodule.",train', "img/0.png,A second report of image zero.,train",
            "img/1.png,An anechoic cyst.,train", "img/2.png,A spongiform nodule.,train",
            "img/3.png,A taller-than-wide nodule.,val", "img/4.png,A calcified nodule.,test",
            "img/5.png,A mixed nodule.,test"]
    csv = _write_caption_csv(tmp_path, rows)
    manifest, captions = read_caption_csv(csv)
    assert len(manifest) == 6 and captions["img/0.png"] == ["A solid, hypoechoic nodule.",
                                                             "A second report of image zero."]
    data = CaptionCSVDataModule(str(csv), image_size=32, batch_size=4, decode_cache=False)
    assert data.num_classes == 0
    data.setup("fit")
    train = data.datasets["train"]
    drawn = {train[train.names.index("img/0.png")]["caption"] for _ in range(40)}
    assert drawn == set(captions["img/0.png"])  # an image with two captions yields both in training
    batch = next(iter(data.val_dataloader()))
    assert batch["caption"] == ["A taller-than-wide nodule."] and batch["image"].shape == (1, 1, 32, 32)
    assert set(data.captions) >= {"A calcified nodule.", "An anechoic cyst."}


def test_caption_csv_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no caption column"):
        read_caption_csv(_write_caption_csv(tmp_path, ["img/0.png,x"], header="image_path,notes"))
    with pytest.raises(ValueError, match=r"captions.csv:3: empty 'caption'"):
        read_caption_csv(_write_caption_csv(tmp_path, ["img/0.png,fine", "img/1.png,"]))


def test_synthetic_captions_are_the_generators_and_can_be_refined(tiny_thyroid, tmp_path):
    lexicon = SyntheticCaptionDataModule(preset="thyroid", profile="tiny", image_size=32, decode_cache=False)
    lexicon.setup("fit")
    item = lexicon.datasets["train"][0]
    records = {json.loads(line)["name"]: json.loads(line) for line in
               (tiny_thyroid / "metadata.jsonl").read_text().splitlines()}
    assert item["caption"] == records[item["name"]]["caption"] and item["caption"].startswith("Thyroid nodule")
    refined = tmp_path / "refined.jsonl"
    refined.write_text(json.dumps({"source": item["caption"], "refined": "A report in another style."}) + "\n")
    data = SyntheticCaptionDataModule(preset="thyroid", profile="tiny", image_size=32, decode_cache=False,
                                      caption_source="both", refined_captions=str(refined))
    data.setup("fit")
    assert data.captions_by_name[item["name"]] == [item["caption"], "A report in another style."]
    with pytest.raises(ValueError, match="needs refined_captions"):
        SyntheticCaptionDataModule(caption_source="refined")


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory, usvl_cache):
    root = tmp_path_factory.mktemp("stage1")
    run_lightning(["fit", *smoke("pretrain_thyroid"), "--trainer.logger.init_args.save_dir", str(root)])
    return next((root / "pretrain_thyroid").rglob("*.ckpt"))


def _stage2(checkpoint, save_dir, *extra) -> USVLCLI:
    args = [*smoke("thyroid_cls_from_pretrain"), "--trainer.logger.init_args.save_dir", str(save_dir),
            "--model.init_args.init_from", str(checkpoint), *extra]
    return USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=args)


def test_stage1_checkpoint_holds_adapters_projections_and_temperature(stage1_checkpoint):
    state = torch.load(stage1_checkpoint, map_location="cpu", weights_only=False)
    keys = set(state["state_dict"])
    assert "logit_scale" in keys and any(".adapter." in k for k in keys)
    assert {"encoder.text_projection.weight", "encoder.image_projection.1.weight"} <= keys
    assert not any(k.startswith("encoder.image_tower.conv_stem") for k in keys)
    assert "MonaAdapter(variant='baseline'" in state["usvl"]["adapter"]


def test_stage2_starts_from_the_stage1_weights(stage1_checkpoint, tmp_path):
    cli = _stage2(stage1_checkpoint, tmp_path)
    model = cli.model
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.setup("fit")
    source = torch.load(stage1_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    state = model.state_dict()
    encoder_keys = [k for k in source if k.startswith("encoder.")]
    assert len(encoder_keys) > 10
    for key in encoder_keys:
        assert torch.equal(state[key], source[key]), key
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())  # the head is not loaded
    assert model.initialised_from == str(stage1_checkpoint)
    cli.trainer.fit(model, datamodule=cli.datamodule)  # a stage-2 smoke fit from the loaded weights
    assert cli.trainer.state.finished


def test_stage2_refuses_another_mona_variant_or_size(stage1_checkpoint, tmp_path):
    cli = _stage2(stage1_checkpoint, tmp_path, "--model.init_args.adapter.init_args.variant", "hybrid")
    with pytest.raises(InitFromError) as error:
        cli.model.setup("fit")
    message = str(error.value)
    assert "variant='baseline'" in message and "variant='hybrid'" in message  # both sides named
    assert "are not in the checkpoint" in message and ".adapter." in message
    cli = _stage2(stage1_checkpoint, tmp_path, "--model.init_args.adapter.init_args.bottleneck", "32")
    with pytest.raises(InitFromError, match=r"shapes differ: encoder\..* in the checkpoint vs .* in the model"):
        cli.model.setup("fit")


def test_zeroshot_from_a_stage1_checkpoint_matches_stage1s_own_zeroshot_test(stage1_checkpoint, tmp_path):
    zeroshot = ["--config", str(CONFIGS / "zeroshot" / "thyroid.yaml"), "--config", str(CONFIGS / "data" / "tiny.yaml"),
                "--trainer.logger.init_args.save_dir", str(tmp_path), "--model.init_args.init_from",
                str(stage1_checkpoint)]
    run_lightning(["test", *zeroshot])
    report = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())["metrics"]
    stage1 = json.loads(next(stage1_checkpoint.parents[1].glob("test_metrics.json")).read_text())["metrics"]
    assert report["test/auroc"] == pytest.approx(stage1["test/zeroshot_auroc"], abs=1e-6)
    assert report["test/accuracy"] == pytest.approx(stage1["test/zeroshot_accuracy"], abs=1e-6)
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=zeroshot)
    cli.model.setup("test")
    source = torch.load(stage1_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(cli.model.logit_scale, source["logit_scale"])  # the learnt temperature is loaded too


def test_zeroshot_lexicon_from_a_stage1_checkpoint_reports_and_reads_out_descriptors(stage1_checkpoint, tmp_path):
    zeroshot = ["--config", str(CONFIGS / "zeroshot" / "thyroid_lexicon.yaml"), "--config",
                str(CONFIGS / "data" / "tiny.yaml"), "--model.init_args.init_from", str(stage1_checkpoint)]
    run_lightning(["test", *zeroshot, "--trainer.logger.init_args.save_dir", str(tmp_path / "test")])
    report = json.loads(next((tmp_path / "test").rglob("test_metrics.json")).read_text())["metrics"]
    stage1 = json.loads(next(stage1_checkpoint.parents[1].glob("test_metrics.json")).read_text())["metrics"]
    assert report["test/auroc"] == pytest.approx(stage1["test/zeroshot_auroc"], abs=1e-6)  # the same classifier
    for key in ("test/composition_accuracy", "test/margin_kappa", "test/echogenic_foci_accuracy",
                "test/category_kappa_quadratic", "test/score_auroc", "test/classifier_auroc", "test/loss_lexicon"):
        assert key in report, key
    assert report["test/classifier_auroc"] == pytest.approx(report["test/auroc"], abs=1e-6)
    cli = USVLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                  args=zeroshot)
    cli.model.setup("test")
    source = torch.load(stage1_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(cli.model.encoder.text_projection.weight, source["encoder.text_projection.weight"])
    run_lightning(["predict", *zeroshot, "--trainer.logger.init_args.save_dir", str(tmp_path / "predict")])
    folder = next((tmp_path / "predict").rglob("predictions.csv")).parent
    rows = list(csv.DictReader((folder / "predictions.csv").open(encoding="utf-8")))
    assert rows and all(row["sentence"].startswith(("Cystic", "Spongiform", "Mixed", "Solid")) for row in rows)
    record = json.loads((folder / rows[0]["json"]).read_text(encoding="utf-8"))
    assert record["sentence"] == rows[0]["sentence"]
    assert sum(record["descriptors"]["composition"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_select_weights_flags_unexpected_keys_and_ignores_heads():
    target = {"encoder.a": torch.zeros(2), "encoder.frozen": torch.zeros(3), "head.w": torch.zeros(1)}
    source = {"encoder.a": torch.ones(2), "encoder.frozen": torch.ones(3), "head.w": torch.ones(5),
              "logit_scale": torch.tensor(2.0)}
    loaded = select_weights(source, target, {"encoder.a"})
    assert set(loaded) == {"encoder.a", "encoder.frozen"}  # no head, no temperature the model lacks
    with pytest.raises(InitFromError, match=r"encoder weights of the checkpoint do not exist in the model: "
                                            r"encoder.extra \(4,\)"):
        select_weights({**source, "encoder.extra": torch.ones(4)}, target, {"encoder.a"})


def test_init_from_a_missing_checkpoint_says_what_to_run(tmp_path):
    cli = _stage2(tmp_path / "nothing.ckpt", tmp_path)
    with pytest.raises(FileNotFoundError, match="pretrain_<organ>.yaml"):
        cli.model.setup("fit")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        cli.model.load_init_from(str(tmp_path / "empty_run"))


def test_pretrain_configs_use_the_contrastive_recipe():
    for organ in ("thyroid", "breast"):
        text = (CONFIGS / f"pretrain_{organ}.yaml").read_text()
        assert "config: recipes/pretrain.yaml" in text and f"preset: {organ}" in text
