import math

import numpy as np
import pytest
import torch

from usvl.metrics import CASE_NAMES, SegmentationMetrics, asd, dice, hd95, iou, segmentation_scores


def square(top, left, size=4, shape=(12, 12)):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def brute_force_distances(pred, true, spacing=(1.0, 1.0)):
    """Boundary by explicit 4-neighbour checks, distances by all pairs."""

    def boundary_points(mask):
        padded = np.pad(mask, 1)
        points = []
        for r, c in zip(*np.nonzero(mask), strict=True):
            neighbours = (padded[r, c + 1], padded[r + 2, c + 1], padded[r + 1, c], padded[r + 1, c + 2])
            if not all(neighbours):
                points.append((r * spacing[0], c * spacing[1]))
        return np.array(points)

    a, b = boundary_points(pred), boundary_points(true)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return pairwise.min(1), pairwise.min(0)


def test_perfect_overlap():
    mask = square(3, 4)
    assert dice(mask, mask) == 1
    assert iou(mask, mask) == 1
    assert hd95(mask, mask) == 0
    assert asd(mask, mask) == 0


def test_shifted_square_in_pixels():
    true, pred = square(2, 2), square(2, 4)
    # Overlap 4x2 = 8 of 16 + 16 pixels; union 24.
    assert dice(pred, true).item() == pytest.approx(0.5)
    assert iou(pred, true).item() == pytest.approx(1 / 3)
    # Each 12-pixel ring sees the other at distances {0 x4, 1 x4, 2 x4}: 95th percentile 2, mean 1.
    assert hd95(pred, true).item() == pytest.approx(2.0)
    assert asd(pred, true).item() == pytest.approx(1.0)


def test_shifted_square_with_anisotropic_spacing_in_mm():
    true, pred = square(2, 2), square(2, 4)
    # Shift along the columns (2 mm per pixel); row steps cost 0.5 mm: distances {0 x4, 0.5 x2, 2 x2, 4 x4}.
    assert hd95(pred, true, spacing=(0.5, 2.0)).item() == pytest.approx(4.0)
    assert asd(pred, true, spacing=(0.5, 2.0)).item() == pytest.approx(21 / 12)
    # Swapping the axes of image and spacing together gives the same result; swapping only the spacing does not.
    assert hd95(pred.T, true.T, spacing=(2.0, 0.5)).item() == pytest.approx(4.0)
    assert hd95(pred, true, spacing=(2.0, 0.5)).item() == pytest.approx(1.0)


def test_disjoint_masks():
    true = torch.zeros(8, 8, dtype=torch.int64)
    pred = torch.zeros(8, 8, dtype=torch.int64)
    true[1, 1] = 1
    pred[1, 6] = 1
    assert dice(pred, true) == 0
    assert iou(pred, true) == 0
    assert hd95(pred, true).item() == pytest.approx(5.0)
    assert asd(pred, true).item() == pytest.approx(5.0)


def test_hd95_and_asd_match_brute_force_on_random_shapes():
    rng = np.random.default_rng(0)
    spacing = (0.7, 1.3)
    for _ in range(5):
        true = rng.random((16, 14)) < 0.5
        pred = rng.random((16, 14)) < 0.4
        forward, backward = brute_force_distances(pred, true, spacing)
        expected_hd = max(np.percentile(forward, 95), np.percentile(backward, 95))
        expected_asd = np.concatenate([forward, backward]).mean()
        assert hd95(pred, true, spacing=spacing).item() == pytest.approx(expected_hd)
        assert asd(pred, true, spacing=spacing).item() == pytest.approx(expected_asd)


def test_empty_mask_policy():
    empty = torch.zeros(10, 20, dtype=torch.bool)
    lesion = square(2, 2, shape=(10, 20))
    scores = segmentation_scores(torch.stack([empty, lesion, empty]), torch.stack([empty, empty, lesion]))
    assert [CASE_NAMES[c] for c in scores["case"]] == ["true_empty", "false_positive_empty", "missed"]
    assert scores["dice"].tolist() == [1.0, 0.0, 0.0]
    assert scores["iou"].tolist() == [1.0, 0.0, 0.0]
    assert scores["hd95"][0] == 0 and scores["asd"][0] == 0
    assert math.isnan(scores["hd95"][1]) and math.isnan(scores["asd"][1])
    assert scores["hd95"][2].item() == pytest.approx(math.hypot(10, 20))
    assert asd(empty, lesion, spacing=(0.5, 0.25)).item() == pytest.approx(math.hypot(5, 5))


def test_batch_shapes_and_input_types():
    true = torch.stack([square(2, 2), square(5, 5)])
    pred = torch.stack([square(2, 2), square(5, 7)])
    expected = dice(pred, true)
    assert expected.shape == (2,) and expected.dtype == torch.float64
    assert torch.equal(dice(pred[:, None], true[:, None].float()), expected)
    assert torch.equal(dice(pred.numpy().astype(np.uint8), true.numpy()), expected)
    assert dice(pred[1], true[1]).shape == ()
    assert dice(pred[1], true[1]) == expected[1]
    assert hd95(pred[:, None], true[:, None]).shape == (2,)
    per_image = hd95(pred, true, spacing=[(1.0, 1.0), (0.5, 2.0)])
    assert per_image.tolist() == pytest.approx([0.0, 4.0])


def test_invalid_inputs_are_refused():
    mask = square(2, 2)
    with pytest.raises(ValueError, match="0 and 1"):
        dice(mask.float() * 0.7, mask)
    with pytest.raises(ValueError, match="differ in shape"):
        dice(mask, mask[:-1])
    with pytest.raises(ValueError, match="one channel"):
        dice(torch.stack([mask, mask])[None], torch.stack([mask, mask])[None])
    with pytest.raises(ValueError, match="spacing"):
        hd95(mask, mask, spacing=(1.0, 0.0))


def mixed_batch():
    empty = torch.zeros(12, 12, dtype=torch.bool)
    pred = torch.stack([square(2, 2), square(2, 4), empty, square(6, 6), empty, empty])
    true = torch.stack([square(2, 2), square(2, 2), empty, empty, empty, square(1, 1)])
    return pred, true


def test_accumulator_counts_rates_and_records():
    pred, true = mixed_batch()
    metric = SegmentationMetrics()
    metric.update(pred[:4], true[:4], index=[0, 1, 2, 3])
    metric.update(pred[4:, None], true[4:, None].long(), index=torch.tensor([4, 5]))
    result = metric.compute()
    assert all(isinstance(value, float) for value in result.values())
    assert result["n_images"] == 6
    assert (result["n_both_nonempty"], result["n_true_empty"]) == (2, 2)
    assert (result["n_false_positive_empty"], result["n_missed"]) == (1, 1)
    assert result["fp_rate_normal"] == pytest.approx(1 / 3)
    # Dice per image: 1, 0.5, 1, 0, 1, 0.
    assert result["dice"] == pytest.approx(3.5 / 6)
    assert result["dice_lesion"] == pytest.approx(1.5 / 3)
    diagonal = math.hypot(12, 12)
    # HD95 defined on 5 images: 0, 2, 0, (NaN dropped but counted), 0, diagonal.
    assert result["n_distance"] == 5
    assert result["hd95"] == pytest.approx((2 + diagonal) / 5)
    assert result["hd95_median"] == 0
    assert result["asd"] == pytest.approx((1 + diagonal) / 5)
    assert result["hd95_lesion"] == pytest.approx((2 + diagonal) / 3)

    records = metric.per_image()
    assert [r["index"] for r in records] == list(range(6))
    assert [r["case"] for r in records] == [
        "both_nonempty",
        "both_nonempty",
        "true_empty",
        "false_positive_empty",
        "true_empty",
        "missed",
    ]
    assert records[3]["pred_pixels"] == 16 and records[3]["true_pixels"] == 0
    assert math.isnan(records[0]["spacing_row"])

    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty_result = metric.compute()
    assert empty_result["n_images"] == 0 and math.isnan(empty_result["dice"])
    assert metric.per_image() == []


def test_accumulator_merges_like_a_ddp_gather():
    pred, true = mixed_batch()
    whole = SegmentationMetrics()
    whole.update(pred, true, spacing=(0.5, 0.5))
    first, second = SegmentationMetrics(), SegmentationMetrics()
    first.update(pred[:3], true[:3], spacing=(0.5, 0.5))
    second.update(pred[3:], true[3:], spacing=(0.5, 0.5))
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, nan_ok=True), key
    assert first.dtype == torch.float64 and all(state.dtype == torch.float64 for state in first.dice)
    assert expected["hd95_lesion"] == pytest.approx((1 + math.hypot(6, 6)) / 3)


def test_process_without_images_syncs_with_matching_dtypes():
    pred, true = mixed_batch()
    busy = SegmentationMetrics()
    busy.update(pred, true)
    other_rank = [torch.cat(getattr(busy, name)) for name in SegmentationMetrics._STATES]

    def fake_all_gather(tensor, group=None):
        remote = other_rank.pop(0)
        assert tensor.dtype == remote.dtype and tensor.ndim == remote.ndim
        return [tensor, remote]

    idle = SegmentationMetrics(dist_sync_fn=fake_all_gather, distributed_available_fn=lambda: True)
    with pytest.warns(UserWarning, match="before the ``update``"):
        synced = idle.compute()
    assert not other_rank
    assert synced["n_images"] == 6 and synced["n_missed"] == 1
    assert synced["dice"] == pytest.approx(busy.compute()["dice"])
