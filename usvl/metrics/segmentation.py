"""Per-image metrics for binary segmentation masks, with one explicit policy for empty masks.

The functions take a prediction and a ground truth as boolean or 0/1 tensors or arrays of shape ``[H, W]`` (one
image, 0-d result) or ``[B, H, W]`` / ``[B, 1, H, W]`` (a batch, result of shape ``[B]``). Probabilities or logits
are refused: threshold or ``argmax`` first. Results are ``torch.float64`` tensors on the prediction's device (the
CPU for numpy input; HD95 and ASD are computed on the CPU with scipy and moved back).

Distances are measured between the boundaries of the two masks. A boundary pixel is a foreground pixel with at least
one 4-connected neighbour in the background, pixels outside the image counting as background (the mask minus its
binary erosion by a cross, as in MONAI ``get_mask_edges``). For each boundary pixel of one mask the Euclidean
distance to the nearest boundary pixel of the other is read from a ``scipy.ndimage.distance_transform_edt``, with
``sampling=spacing``. Then

* ``hd95`` is the symmetric 95th-percentile Hausdorff distance: the larger of the two directed 95th percentiles
  (``numpy.percentile`` with linear interpolation), as MONAI ``compute_hausdorff_distance(percentile=95)``;
* ``asd`` is the average symmetric surface distance: the mean over the distances of *both* directions pooled
  (``sum / (|boundary_pred| + |boundary_true|)``), as MONAI ``compute_average_surface_distance(symmetric=True)``.
  The reference code used the directed pred-to-GT mean instead.

Units are pixels when ``spacing`` is ``None``, otherwise the units of ``spacing = (row, col)`` (e.g. mm per pixel
along the rows, i.e. the height axis, and along the columns, the width axis).

Empty-mask policy (every image lands in exactly one case; nothing is dropped silently):

========================  ==========  ============  ===========  ==================================================
case                      prediction  ground truth  Dice / IoU   HD95 / ASD
========================  ==========  ============  ===========  ==================================================
``both_nonempty``         non-empty   non-empty     formula      boundary distances as above
``true_empty``            empty       empty         1 / 1        0 / 0 (a correct "no lesion" call)
``false_positive_empty``  non-empty   empty         0 / 0        NaN (undefined; counted, and seen in the
                                                                 false-positive rate on normal images)
``missed``                empty       non-empty     0 / 0        the image diagonal ``sqrt((H*row)^2 + (W*col)^2)``,
                                                                 a worst case above any distance inside the image
========================  ==========  ============  ===========  ==================================================

The reference code (MONAI, ``ignore_empty=True``) returned NaN or inf for the last three cases and then filtered
non-finite values before averaging, so missed lesions left the HD95/ASD average and flattered it (the problem raised
in MONAI issue 9095). Here a missed lesion costs the worst possible distance, and :class:`SegmentationMetrics`
reports how many images fall in each case, the false-positive rate on normal (GT-empty) images and lesion-only
averages next to the overall ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "CASE_NAMES",
    "SegmentationMetrics",
    "asd",
    "dice",
    "hd95",
    "iou",
    "segmentation_scores",
]

CASE_NAMES: tuple[str, ...] = ("both_nonempty", "true_empty", "false_positive_empty", "missed")
"""Names of the empty-mask cases, indexed by the integer case codes of :func:`segmentation_scores`."""

BOTH_NONEMPTY, TRUE_EMPTY, FALSE_POSITIVE_EMPTY, MISSED = range(4)

_CROSS = ndimage.generate_binary_structure(2, 1)

MaskLike = torch.Tensor | np.ndarray
SpacingLike = tuple[float, float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None


def _as_batch(mask: MaskLike, name: str) -> tuple[torch.Tensor, bool]:
    """Return a boolean ``[B, H, W]`` tensor and whether the input was a single ``[H, W]`` image."""
    tensor = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
    single = tensor.ndim == 2
    if single:
        tensor = tensor.unsqueeze(0)
    elif tensor.ndim == 4:
        if tensor.shape[1] != 1:
            raise ValueError(f"{name}: expected [B, 1, H, W] with one channel, got shape {tuple(tensor.shape)}")
        tensor = tensor[:, 0]
    elif tensor.ndim != 3:
        raise ValueError(f"{name}: expected [H, W], [B, H, W] or [B, 1, H, W], got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.bool:
        if not bool(((tensor == 0) | (tensor == 1)).all()):
            raise ValueError(f"{name}: masks must be boolean or contain only 0 and 1; threshold or argmax first")
        tensor = tensor != 0
    return tensor, single


def _pair(pred_mask: MaskLike, true_mask: MaskLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    pred, single = _as_batch(pred_mask, "pred_mask")
    true, _ = _as_batch(true_mask, "true_mask")
    if pred.shape != true.shape:
        raise ValueError(f"pred_mask and true_mask differ in shape: {tuple(pred.shape)} vs {tuple(true.shape)}")
    true = true.to(pred.device)
    return pred, true, single


def _spacings(spacing: SpacingLike, batch: int) -> np.ndarray:
    """Return a ``[B, 2]`` float64 array of ``(row, col)`` spacings (ones when ``spacing`` is ``None``)."""
    if spacing is None:
        return np.ones((batch, 2))
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().double().numpy()
    array = np.asarray(spacing, dtype=np.float64)
    if array.shape == (2,):
        array = np.repeat(array[None], batch, axis=0)
    if array.shape != (batch, 2):
        raise ValueError(f"spacing must be (row, col) or one (row, col) per image, got shape {array.shape}")
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError("spacing must be positive and finite")
    return array


def _case_codes(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    pred_any = pred.flatten(1).any(1)
    true_any = true.flatten(1).any(1)
    codes = torch.full(pred_any.shape, BOTH_NONEMPTY, dtype=torch.long, device=pred.device)
    codes[~pred_any & ~true_any] = TRUE_EMPTY
    codes[pred_any & ~true_any] = FALSE_POSITIVE_EMPTY
    codes[~pred_any & true_any] = MISSED
    return codes


def _overlap(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of boolean ``[B, H, W]`` masks, following the empty-mask policy."""
    intersection = (pred & true).flatten(1).sum(1).double()
    pred_area = pred.flatten(1).sum(1).double()
    true_area = true.flatten(1).sum(1).double()
    union = pred_area + true_area - intersection
    both_empty = union == 0
    safe_total = torch.where(both_empty, torch.ones_like(union), pred_area + true_area)
    safe_union = torch.where(both_empty, torch.ones_like(union), union)
    dice_values = torch.where(both_empty, torch.ones_like(union), 2 * intersection / safe_total)
    iou_values = torch.where(both_empty, torch.ones_like(union), intersection / safe_union)
    return dice_values, iou_values


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _directed_distances(pred: np.ndarray, true: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances pred-boundary -> true-boundary and true-boundary -> pred-boundary of two non-empty masks."""
    edge_pred = _boundary(pred)
    edge_true = _boundary(true)
    # The distance transform only needs the bounding box of both boundaries: every boundary pixel lies inside it.
    rows = np.flatnonzero((edge_pred | edge_true).any(1))
    cols = np.flatnonzero((edge_pred | edge_true).any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    edge_pred, edge_true = edge_pred[box], edge_true[box]
    to_true = ndimage.distance_transform_edt(~edge_true, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~edge_pred, sampling=spacing)
    return to_true[edge_pred], to_pred[edge_true]


def _distances(
    pred: torch.Tensor, true: torch.Tensor, codes: torch.Tensor, spacing: SpacingLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image HD95 and ASD of boolean ``[B, H, W]`` masks, following the empty-mask policy."""
    batch, height, width = pred.shape
    spacings = _spacings(spacing, batch)
    pred_np = pred.detach().cpu().numpy()
    true_np = true.detach().cpu().numpy()
    codes_np = codes.cpu().numpy()
    hd = np.empty(batch)
    avg = np.empty(batch)
    for i in range(batch):
        row, col = spacings[i]
        if codes_np[i] == TRUE_EMPTY:
            hd[i] = avg[i] = 0.0
        elif codes_np[i] == FALSE_POSITIVE_EMPTY:
            hd[i] = avg[i] = math.nan
        elif codes_np[i] == MISSED:
            hd[i] = avg[i] = math.hypot(height * row, width * col)
        else:
            forward, backward = _directed_distances(pred_np[i], true_np[i], spacings[i])
            hd[i] = max(np.percentile(forward, 95), np.percentile(backward, 95))
            avg[i] = (forward.sum() + backward.sum()) / (forward.size + backward.size)
    device = pred.device
    return torch.from_numpy(hd).to(device), torch.from_numpy(avg).to(device)


def _squeeze(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def dice(pred_mask: MaskLike, true_mask: MaskLike) -> torch.Tensor:
    """Per-image Dice coefficient ``2|P∩T| / (|P| + |T|)``.

    Args:
        pred_mask: Predicted mask, boolean or 0/1, ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``.
        true_mask: Ground-truth mask of the same shape.

    Returns:
        Dice as ``float64``: a 0-d tensor for one ``[H, W]`` image, else shape ``[B]``. Both masks empty gives 1,
        exactly one empty gives 0 (see the module docstring).
    """
    pred, true, single = _pair(pred_mask, true_mask)
    return _squeeze(_overlap(pred, true)[0], single)


def iou(pred_mask: MaskLike, true_mask: MaskLike) -> torch.Tensor:
    """Per-image intersection over union (Jaccard index) ``|P∩T| / |P∪T|``.

    Args:
        pred_mask: Predicted mask, boolean or 0/1, ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``.
        true_mask: Ground-truth mask of the same shape.

    Returns:
        IoU as ``float64``: a 0-d tensor for one ``[H, W]`` image, else shape ``[B]``. Both masks empty gives 1,
        exactly one empty gives 0.
    """
    pred, true, single = _pair(pred_mask, true_mask)
    return _squeeze(_overlap(pred, true)[1], single)


def hd95(pred_mask: MaskLike, true_mask: MaskLike, spacing: SpacingLike = None) -> torch.Tensor:
    """Per-image symmetric 95th-percentile Hausdorff distance between mask boundaries.

    Args:
        pred_mask: Predicted mask, boolean or 0/1, ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``.
        true_mask: Ground-truth mask of the same shape.
        spacing: Pixel size ``(row, col)`` (height axis, width axis), one pair for all images or ``[B, 2]`` for
            one pair per image. ``None`` measures in pixels.

    Returns:
        HD95 as ``float64``: a 0-d tensor for one ``[H, W]`` image, else shape ``[B]``. Both empty gives 0, an
        empty ground truth with a non-empty prediction gives NaN, a missed lesion gives the image diagonal.
    """
    pred, true, single = _pair(pred_mask, true_mask)
    return _squeeze(_distances(pred, true, _case_codes(pred, true), spacing)[0], single)


def asd(pred_mask: MaskLike, true_mask: MaskLike, spacing: SpacingLike = None) -> torch.Tensor:
    """Per-image average symmetric surface distance between mask boundaries.

    Args:
        pred_mask: Predicted mask, boolean or 0/1, ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``.
        true_mask: Ground-truth mask of the same shape.
        spacing: Pixel size ``(row, col)``, one pair for all images or ``[B, 2]``. ``None`` measures in pixels.

    Returns:
        ASD as ``float64``: a 0-d tensor for one ``[H, W]`` image, else shape ``[B]``, with the same empty-mask
        values as :func:`hd95`.
    """
    pred, true, single = _pair(pred_mask, true_mask)
    return _squeeze(_distances(pred, true, _case_codes(pred, true), spacing)[1], single)


def segmentation_scores(
    pred_mask: MaskLike, true_mask: MaskLike, spacing: SpacingLike = None
) -> dict[str, torch.Tensor]:
    """All per-image scores at once (one pass over the masks).

    Args:
        pred_mask: Predicted mask, boolean or 0/1, ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``.
        true_mask: Ground-truth mask of the same shape.
        spacing: Pixel size ``(row, col)``, one pair for all images or ``[B, 2]``. ``None`` measures in pixels.

    Returns:
        Dict of ``[B]`` tensors (0-d for a single ``[H, W]`` image): ``dice``, ``iou``, ``hd95``, ``asd``
        (``float64``), ``case`` (``int64`` index into :data:`CASE_NAMES`), ``pred_pixels`` and ``true_pixels``
        (``int64`` foreground pixel counts).
    """
    pred, true, single = _pair(pred_mask, true_mask)
    codes = _case_codes(pred, true)
    dice_values, iou_values = _overlap(pred, true)
    hd_values, asd_values = _distances(pred, true, codes, spacing)
    scores = {
        "dice": dice_values,
        "iou": iou_values,
        "hd95": hd_values,
        "asd": asd_values,
        "case": codes,
        "pred_pixels": pred.flatten(1).sum(1),
        "true_pixels": true.flatten(1).sum(1),
    }
    return {key: _squeeze(value, single) for key, value in scores.items()}


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan


def _median(values: torch.Tensor) -> float:
    # torch.median returns the lower of the two middle values; use the usual midpoint definition instead.
    return float(np.median(values.cpu().numpy())) if values.numel() else math.nan


class SegmentationMetrics(Metric):
    """Accumulates per-image segmentation scores over an epoch and summarises them.

    Per-image values are kept as 1-D ``float64`` list states reduced by concatenation (the metric's dtype is set to
    ``float64``, so the empty placeholder torchmetrics gathers from a process that saw no image matches them), so the
    metric syncs across DDP processes.
    ``compute()`` returns a dict of Python floats:

    * ``n_images`` and one count per empty-mask case: ``n_both_nonempty``, ``n_true_empty``,
      ``n_false_positive_empty``, ``n_missed``;
    * ``dice``, ``iou``: means over all images (empty-mask policy applied);
    * ``dice_lesion``, ``iou_lesion``: means over lesion images (ground truth non-empty, missed lesions included
      with 0);
    * ``hd95``, ``hd95_median``, ``asd``, ``asd_median``: over images where the distance is defined, i.e. all but
      ``false_positive_empty`` (true-empty images count 0, missed lesions the image diagonal); ``n_distance`` says
      how many images that is;
    * ``hd95_lesion``, ``asd_lesion``: means over lesion images only (comparable to papers that skip normal images,
      but with missed lesions penalised rather than dropped);
    * ``fp_rate_normal``: fraction of normal images (ground truth empty) with any predicted pixel.

    Averages over an empty set are NaN. :meth:`per_image` gives one record per image for a CSV.

    Args:
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``dist_sync_on_step``).

    Example:
        >>> metric = SegmentationMetrics()
        >>> metric.update(pred_logits.argmax(1), labels, spacing=(0.1, 0.1))  # doctest: +SKIP
        >>> self.log_dict({f"test/{k}": v for k, v in metric.compute().items()})  # doctest: +SKIP
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    _STATES = (
        "dice",
        "iou",
        "hd95",
        "asd",
        "case",
        "pred_pixels",
        "true_pixels",
        "index",
        "spacing_row",
        "spacing_col",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.set_dtype(torch.float64)

    def update(
        self,
        pred_mask: MaskLike,
        true_mask: MaskLike,
        spacing: SpacingLike = None,
        index: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        """Score a batch of masks and store the per-image values.

        Args:
            pred_mask: Predicted masks, boolean or 0/1, ``[B, H, W]``, ``[B, 1, H, W]`` or one ``[H, W]``.
            true_mask: Ground-truth masks of the same shape.
            spacing: Pixel size ``(row, col)``, one pair for the batch or ``[B, 2]``. ``None`` measures in pixels
                (do not mix pixel and physical units within one epoch).
            index: Optional integer id per image (e.g. the dataset index) stored with the records, so that
                :meth:`per_image` rows can be matched to file names also after a DDP gather. Defaults to -1.
        """
        scores = segmentation_scores(pred_mask, true_mask, spacing)
        scores = {key: value.reshape(-1) for key, value in scores.items()}
        batch = scores["dice"].numel()
        if index is None:
            scores["index"] = torch.full((batch,), -1)
        else:
            scores["index"] = torch.as_tensor(index).reshape(-1)
            if scores["index"].numel() != batch:
                raise ValueError(f"index has {scores['index'].numel()} entries for {batch} images")
        spacings = torch.from_numpy(np.full((batch, 2), np.nan) if spacing is None else _spacings(spacing, batch))
        scores["spacing_row"], scores["spacing_col"] = spacings[:, 0], spacings[:, 1]
        for name in self._STATES:
            getattr(self, name).append(scores[name].to(device=self.device, dtype=torch.float64))

    def _gathered(self) -> dict[str, torch.Tensor]:
        states = {}
        for name in self._STATES:
            value = getattr(self, name)
            empty = isinstance(value, list) and not value
            states[name] = torch.empty(0, dtype=torch.float64, device=self.device) if empty else dim_zero_cat(value)
        states["case"] = states["case"].long()
        return states

    def compute(self) -> dict[str, float]:
        """Summarise the stored images.

        Returns:
            Dict of floats described in the class docstring.
        """
        s = self._gathered()
        case = s["case"]
        lesion = (case == BOTH_NONEMPTY) | (case == MISSED)
        normal = (case == TRUE_EMPTY) | (case == FALSE_POSITIVE_EMPTY)
        defined = ~torch.isnan(s["hd95"])
        result = {
            "n_images": float(case.numel()),
            **{f"n_{name}": float((case == code).sum()) for code, name in enumerate(CASE_NAMES)},
            "dice": _mean(s["dice"]),
            "iou": _mean(s["iou"]),
            "dice_lesion": _mean(s["dice"][lesion]),
            "iou_lesion": _mean(s["iou"][lesion]),
            "hd95": _mean(s["hd95"][defined]),
            "hd95_median": _median(s["hd95"][defined]),
            "asd": _mean(s["asd"][defined]),
            "asd_median": _median(s["asd"][defined]),
            "n_distance": float(defined.sum()),
            "hd95_lesion": _mean(s["hd95"][lesion]),
            "asd_lesion": _mean(s["asd"][lesion]),
            "fp_rate_normal": _mean((case[normal] == FALSE_POSITIVE_EMPTY).double()),
        }
        return result

    def per_image(self) -> list[dict[str, Any]]:
        """One record per stored image, in update order (rank by rank after a DDP sync).

        Returns:
            List of dicts with ``index``, ``case`` (a name from :data:`CASE_NAMES`), ``dice``, ``iou``, ``hd95``,
            ``asd``, ``pred_pixels``, ``true_pixels``, ``spacing_row`` and ``spacing_col`` (NaN when measured in
            pixels); ready for ``pandas.DataFrame(metric.per_image()).to_csv(...)``.
        """
        s = {key: value.cpu() for key, value in self._gathered().items()}
        records = []
        for i in range(s["case"].numel()):
            records.append(
                {
                    "index": int(s["index"][i]),
                    "case": CASE_NAMES[int(s["case"][i])],
                    "dice": float(s["dice"][i]),
                    "iou": float(s["iou"][i]),
                    "hd95": float(s["hd95"][i]),
                    "asd": float(s["asd"][i]),
                    "pred_pixels": int(s["pred_pixels"][i]),
                    "true_pixels": int(s["true_pixels"][i]),
                    "spacing_row": float(s["spacing_row"][i]),
                    "spacing_col": float(s["spacing_col"][i]),
                }
            )
        return records
