"""Mona adapters (multi-cognitive visual adapters) for feature maps and ViT token sequences.

Mona (Yin et al., CVPR 2025), as used by NextGen-UIA: a scaled LayerNorm, a down projection to a bottleneck,
a 2-D op on the bottleneck map, GELU, dropout, an up projection and an outer residual::

    u   = LN(z)·γ + z·γx
    h   = down(u)
    h   = op(h)                  # on [B, C, H, W]; for tokens only the patch tokens, the CLS/prefix tokens skip it
    out = z + up(dropout(gelu(h)))

Four variants of ``op`` (x is the bottleneck map, dw_k a depthwise k×k conv, P a 1×1 conv):

* ``baseline`` (:class:`MultiScaleDepthwiseOp`): ``y = mean_k dw_k(x) + x; out = y + P(y)``.
* ``noise_aware`` (:class:`NoiseAwareDepthwiseOp`): ``w = softmax(NoiseEstimator(x))`` per sample over the three
  branches; ``y = Σ_k w_k·dw_k(x) + x; out = y + P(y)``.
* ``freq`` (:class:`FrequencyDepthwiseOp`): ``x' = FrequencyFilter(x)``; ``y = mean_k dw_k(x') + x`` (the residual
  uses the *unfiltered* x, as in the reference); ``out = y + P(y)``.
* ``hybrid`` (:class:`HybridDepthwiseOp`): ``x' = FrequencyFilter(x)``; ``w = softmax(NoiseEstimator(x'))`` (the
  estimator sees the filtered x'); ``y = Σ_k w_k·dw_k(x') + x; out = y + P(y)``.

The layer takes ``[B, C, H, W]`` maps (after the stages of a CNN image tower; down/up are 1×1 convs) and batch-first
ViT tokens ``[B, N, D]`` (after the blocks of a timm/open_clip tower; the same down/up weights are applied as linear
layers to every token, and the 2-D op only to the patch tokens reshaped to ``[B, C, h, w]``).

Differences from the reference code, on purpose:

* ``zero_init``: the up projection can start at zero, so the adapted encoder equals the pretrained one at step 0
  (the reference uses PyTorch's default init, so its adapter is not an identity at init).
* The bottleneck is capped at the channel count.
* The ``freq`` filter is a real frequency-domain filter: a learnable per-channel mask over the rfft2 bins,
  parameterised on a fixed grid (``freq_size``) and resampled to the run-time spectrum size. The reference's filter
  is one real scalar per channel applied to every bin, which by linearity is just a per-channel gain
  (``irfft2(rfft2(x)·φ_c) = φ_c·x``) with no frequency selectivity. Hence ``freq``/``hybrid`` have more parameters
  than the reference: ``C·fu·fv`` instead of ``C`` (for C=64 and the default ``(14, 8)``: 7,168 instead of 64).
* The patch grid of a token sequence is inferred from the token count (or set with ``grid_size``), so the input
  size is not locked to 224; the reference fixes ``hw_shapes`` at injection time.
* Only batch-first tokens are supported (the reference's sequence-first path is for OpenAI CLIP).
* Parameter names differ from the reference's (``down``/``up``/``op`` instead of ``project1``/``project2``/
  ``adapter_conv``), so reference checkpoints need a key mapping.

Parameter counts per layer at D=768, bottleneck 64 (matching the reference's table where the maths matches):
``baseline`` 111,872 and ``noise_aware`` 112,963 (both equal to the reference); ``freq`` 119,040 and ``hybrid``
120,131 with the default ``freq_size=(14, 8)`` (reference: 111,936 and 113,027 with the scalar filter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from usvl.models.adapters.base import Adapter, select_points, wrap_module
from usvl.models.encoders.base import VisionLanguageEncoder

MonaVariant = Literal["baseline", "noise_aware", "freq", "hybrid"]
MONA_VARIANTS: tuple[str, ...] = ("baseline", "noise_aware", "freq", "hybrid")


class NoiseEstimator(nn.Module):
    """Per-sample softmax weights over the depthwise branches: ``softmax(C2(relu(C1(GAP(x)))))``.

    As in the reference (``NoiseAwareMonaOp``): global average pooling, a 1×1 conv to ``hidden`` channels, ReLU,
    a 1×1 conv to one logit per branch, softmax over branches. The weights are shared across channels and
    positions. At 64 channels this has 1,091 parameters.

    Args:
        channels: Channels of the input map.
        branches: Number of weights (one per depthwise branch).
        hidden: Width of the hidden 1×1 conv (16 in the reference).
    """

    def __init__(self, channels: int, branches: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, branches, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return branch weights ``[B, branches, 1, 1]`` that sum to one per sample."""
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.softmax(self.expand(F.relu(self.reduce(pooled))), dim=1)


class FrequencyFilter(nn.Module):
    """Learnable per-channel mask over the rfft2 bins: ``x' = irfft2(rfft2(x) · W[c, u, v], s=(H, W))``.

    ``weight`` has shape ``[C, fu, fv]`` and starts at ones (an identity filter). Its rows are centred like
    ``fftshift``: ``weight[:, i, j]`` is the gain at vertical frequency ``(i - fu // 2) / fu`` and horizontal
    frequency ``j / (2 (fv - 1))`` cycles per pixel (see :meth:`frequencies`). The default ``(14, 8)`` is exactly the
    rfft2 grid of a 14×14 map (ViT-B/16 at 224). For another map size the mask is resampled bilinearly at the
    map's own bin frequencies (periodic along the vertical axis, where ``+1/2`` and ``-1/2`` cycles coincide), so a
    mask means the same physical frequencies at every input size; at the native size it is used bin for bin.

    Difference from the reference: its filter is one real scalar per channel over all bins, which equals channel
    scaling. The mask is real, so phases are kept; on the ``v = 0`` (and Nyquist) column a mask that is not
    symmetric in ``u`` acts through its symmetric part only, since ``irfft2`` returns a real map.

    The FFT runs in float32 (half-precision FFTs need power-of-two sizes) and the result is cast back.

    Args:
        channels: Channels of the input map.
        freq_size: Size ``(fu, fv)`` of the parameter grid (each at least 2).
    """

    def __init__(self, channels: int, freq_size: Sequence[int] = (14, 8)) -> None:
        super().__init__()
        fu, fv = (int(size) for size in freq_size)
        if fu < 2 or fv < 2:
            raise ValueError(f"freq_size must be at least (2, 2), got {tuple(freq_size)}")
        self.freq_size = (fu, fv)
        self.weight = nn.Parameter(torch.ones(channels, fu, fv))

    def frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequencies (cycles per pixel) of the rows ``[fu]`` and columns ``[fv]`` of :attr:`weight`."""
        fu, fv = self.freq_size
        device = self.weight.device
        rows = (torch.arange(fu, device=device, dtype=torch.float32) - fu // 2) / fu
        cols = torch.arange(fv, device=device, dtype=torch.float32) / (2 * (fv - 1))
        return rows, cols

    def mask(self, height: int, width: int) -> torch.Tensor:
        """The float32 mask for a ``height × width`` map, in rfft2 layout: ``[C, height, width // 2 + 1]``."""
        fu, fv = self.freq_size
        if height == fu and width == 2 * (fv - 1):
            return torch.fft.ifftshift(self.weight.float(), dim=1)
        device = self.weight.device
        # torch.fft.fftfreq / rfftfreq, written with arange so that torch.export (ONNX) can trace them.
        rows = torch.arange(height, device=device, dtype=torch.float32)
        row_freqs = torch.where(rows < (height + 1) // 2, rows, rows - height) / height
        col_freqs = torch.arange(width // 2 + 1, device=device, dtype=torch.float32) / width
        # Pad one row each side periodically (frequency f and f ± 1 are the same bin), so every row frequency in
        # [-1/2, 1/2] falls inside the padded grid; columns cover [0, 1/2] already.
        weight = self.weight.float()
        padded = torch.cat([weight[:, -1:], weight, weight[:, :1]], dim=1)
        row_index = row_freqs * fu + fu // 2 + 1
        col_index = col_freqs * (2 * (fv - 1))
        grid_y = (row_index / (fu + 1) * 2 - 1).view(-1, 1).expand(height, col_freqs.numel())
        grid_x = (col_index / (fv - 1) * 2 - 1).view(1, -1).expand(height, col_freqs.numel())
        grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0)
        sampled = F.grid_sample(padded.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.squeeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a ``[B, C, H, W]`` map in the frequency domain."""
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfft2(x.float())
        filtered = torch.fft.irfft2(spectrum * self.mask(height, width), s=(height, width))
        return filtered.to(x.dtype)


class MultiScaleDepthwiseOp(nn.Module):
    """Mona's baseline op: ``y = mean(dw3, dw5, dw7)(x) + x; out = y + P(y)``.

    Args:
        channels: Channels of the bottleneck map.
    """

    kernel_sizes = (3, 5, 7)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in self.kernel_sizes
        )
        self.mixer = nn.Conv2d(channels, channels, 1)

    def branches(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Combine the depthwise branches on ``x``: their mean, or a ``[B, K, 1, 1]`` weighted sum."""
        outputs = [conv(x) for conv in self.convs]
        if weights is None:
            return sum(outputs) / len(outputs)
        return sum(weights[:, index : index + 1] * output for index, output in enumerate(outputs))

    def mix(self, y: torch.Tensor) -> torch.Tensor:
        """The 1×1 mixer with its residual: ``y + P(y)``."""
        return y + self.mixer(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-scale depthwise filtering with two residuals."""
        return self.mix(self.branches(x) + x)


class NoiseAwareDepthwiseOp(MultiScaleDepthwiseOp):
    """``noise_aware`` op: ``w = NoiseEstimator(x); y = Σ_k w_k·dw_k(x) + x; out = y + P(y)``.

    Args:
        channels: Channels of the bottleneck map.
        noise_hidden: Hidden width of the :class:`NoiseEstimator`.
    """

    def __init__(self, channels: int, noise_hidden: int = 16) -> None:
        super().__init__(channels)
        self.noise = NoiseEstimator(channels, len(self.kernel_sizes), noise_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Noise-weighted multi-scale depthwise filtering with two residuals."""
        return self.mix(self.branches(x, self.noise(x)) + x)


class FrequencyDepthwiseOp(MultiScaleDepthwiseOp):
    """``freq`` op: ``x' = FrequencyFilter(x); y = mean_k dw_k(x') + x; out = y + P(y)``.

    The inner residual adds the unfiltered ``x``, as in the reference (``FreqEnhancedMonaOp``).

    Args:
        channels: Channels of the bottleneck map.
        freq_size: Parameter grid of the :class:`FrequencyFilter`.
    """

    def __init__(self, channels: int, freq_size: Sequence[int] = (14, 8)) -> None:
        super().__init__(channels)
        self.filter = FrequencyFilter(channels, freq_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frequency-filtered multi-scale depthwise filtering with two residuals."""
        return self.mix(self.branches(self.filter(x)) + x)


class HybridDepthwiseOp(MultiScaleDepthwiseOp):
    """``hybrid`` op: ``x' = FrequencyFilter(x); w = NoiseEstimator(x'); y = Σ_k w_k·dw_k(x') + x; out = y + P(y)``.

    As in the reference (``HybridNoiseFreqMonaOp``), the noise estimator sees the filtered ``x'`` and the inner
    residual adds the unfiltered ``x``.

    Args:
        channels: Channels of the bottleneck map.
        freq_size: Parameter grid of the :class:`FrequencyFilter`.
        noise_hidden: Hidden width of the :class:`NoiseEstimator`.
    """

    def __init__(self, channels: int, freq_size: Sequence[int] = (14, 8), noise_hidden: int = 16) -> None:
        super().__init__(channels)
        self.noise = NoiseEstimator(channels, len(self.kernel_sizes), noise_hidden)
        self.filter = FrequencyFilter(channels, freq_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frequency-filtered, noise-weighted multi-scale depthwise filtering with two residuals."""
        filtered = self.filter(x)
        return self.mix(self.branches(filtered, self.noise(filtered)) + x)


def build_mona_op(variant: str, channels: int, freq_size: Sequence[int] = (14, 8)) -> MultiScaleDepthwiseOp:
    """Build the 2-D op of a Mona variant on a ``channels``-wide bottleneck.

    Raises:
        ValueError: ``variant`` is not one of :data:`MONA_VARIANTS`.
    """
    if variant == "baseline":
        return MultiScaleDepthwiseOp(channels)
    if variant == "noise_aware":
        return NoiseAwareDepthwiseOp(channels)
    if variant == "freq":
        return FrequencyDepthwiseOp(channels, freq_size)
    if variant == "hybrid":
        return HybridDepthwiseOp(channels, freq_size)
    raise ValueError(f"Unknown Mona variant '{variant}'; available: {', '.join(MONA_VARIANTS)}")


class MonaLayer(nn.Module):
    """One Mona block on a ``[B, C, H, W]`` feature map or a batch-first ``[B, N, C]`` token sequence.

    On maps, down/up are 1×1 convs and LayerNorm runs over channels. On tokens, the same weights act as linear
    layers on every token; the 2-D op gets only the patch tokens (after the first ``num_prefix_tokens``, e.g. the
    CLS token) reshaped to ``[B, C, h, w]``, while the prefix tokens skip the op but still go through GELU, dropout
    and the up projection (as in the reference). The patch grid is ``grid_size`` (argument or attribute) if set,
    else the square root of the patch count.

    Args:
        channels: Channels of the adapted feature map (or token width).
        bottleneck: Bottleneck width (capped at ``channels``).
        dropout: Dropout after GELU.
        zero_init: Start the up projection at zero, so the layer is an identity at initialisation.
        variant: Which op runs on the bottleneck map: ``baseline``, ``noise_aware``, ``freq`` or ``hybrid``.
        freq_size: Parameter grid ``(fu, fv)`` of the frequency filter (``freq`` and ``hybrid``).
        num_prefix_tokens: Leading tokens (CLS, registers) that skip the 2-D op.
        grid_size: Patch grid ``(h, w)`` of token inputs; ``None`` infers a square grid.
    """

    usvl_adapter = True

    def __init__(
        self,
        channels: int,
        bottleneck: int = 64,
        dropout: float = 0.1,
        zero_init: bool = True,
        variant: MonaVariant = "baseline",
        *,
        freq_size: Sequence[int] = (14, 8),
        num_prefix_tokens: int = 1,
        grid_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        width = min(bottleneck, channels)
        self.variant = variant
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = None if grid_size is None else (int(grid_size[0]), int(grid_size[1]))
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))
        self.gamma_x = nn.Parameter(torch.ones(channels))
        self.down = nn.Conv2d(channels, width, 1)
        self.op = build_mona_op(variant, width, freq_size)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Conv2d(width, channels, 1)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, grid_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x + up(dropout(gelu(op(down(LN(x)·γ + x·γx)))))`` on a map ``[B, C, H, W]`` or tokens ``[B, N, C]``.

        Args:
            x: Feature map or batch-first token sequence.
            grid_size: Patch grid ``(h, w)`` for token inputs; overrides the ``grid_size`` attribute.

        Raises:
            ValueError: ``x`` is neither 3-D nor 4-D, or its patch tokens do not fit the grid.
        """
        if x.dim() == 4:
            return self._forward_map(x)
        if x.dim() == 3:
            return self._forward_tokens(x, grid_size)
        raise ValueError(f"MonaLayer expects [B, C, H, W] maps or [B, N, C] tokens, got shape {tuple(x.shape)}")

    def _scaled_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``LN(x)·γ + x·γx`` over the last dimension."""
        return self.norm(x) * self.gamma + x * self.gamma_x

    def _forward_map(self, x: torch.Tensor) -> torch.Tensor:
        u = self._scaled_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = self.op(self.down(u))
        return x + self.up(self.dropout(F.gelu(h)))

    def _forward_tokens(self, x: torch.Tensor, grid_size: Sequence[int] | None) -> torch.Tensor:
        prefix = self.num_prefix_tokens
        h = F.linear(self._scaled_norm(x), self.down.weight.flatten(1), self.down.bias)
        batch, tokens, width = h.shape
        rows, cols = self._patch_grid(tokens - prefix, grid_size)
        patches = h[:, prefix:].transpose(1, 2).reshape(batch, width, rows, cols)
        patches = self.op(patches).flatten(2).transpose(1, 2)
        h = torch.cat([h[:, :prefix], patches], dim=1)
        return x + F.linear(self.dropout(F.gelu(h)), self.up.weight.flatten(1), self.up.bias)

    def _patch_grid(self, patches: int, grid_size: Sequence[int] | None) -> tuple[int, int]:
        grid = grid_size if grid_size is not None else self.grid_size
        if grid is not None:
            rows, cols = int(grid[0]), int(grid[1])
            if rows * cols != patches:
                raise ValueError(f"grid_size {rows}x{cols} does not match {patches} patch tokens")
            return rows, cols
        side = math.isqrt(max(patches, 0))
        if patches <= 0 or side * side != patches:
            raise ValueError(
                f"{patches} patch tokens (after {self.num_prefix_tokens} prefix tokens) do not form a square grid; "
                "set grid_size or num_prefix_tokens"
            )
        return side, side


class MonaAdapter(Adapter):
    """Insert a Mona layer after each chosen adapter point of the image tower.

    Args:
        variant: Mona variant: ``baseline`` (multi-scale depthwise op), ``noise_aware`` (per-sample branch
            weights), ``freq`` (learnable frequency-domain filter before the branches) or ``hybrid`` (both).
        bottleneck: Bottleneck width (the reference uses 64).
        dropout: Dropout inside each layer.
        points: Indices into the encoder's ``adapter_points``; ``None`` adapts all of them.
        zero_init: Start each layer as an identity.
        freq_size: Parameter grid ``(fu, fv)`` of the frequency filter (``freq`` and ``hybrid``).
        num_prefix_tokens: For token outputs: leading tokens (CLS, registers) that skip the 2-D op; ``None`` takes
            the encoder's ``num_prefix_tokens`` (1 when it has none).
        grid_size: For token outputs: patch grid ``(h, w)``; ``None`` infers a square grid.

    Raises:
        ValueError: ``variant`` is unknown.
    """

    name = "mona"

    def __init__(
        self,
        variant: MonaVariant = "baseline",
        bottleneck: int = 64,
        dropout: float = 0.1,
        points: Sequence[int] | None = None,
        zero_init: bool = True,
        freq_size: tuple[int, int] = (14, 8),
        num_prefix_tokens: int | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> None:
        if variant not in MONA_VARIANTS:
            raise ValueError(f"Unknown Mona variant '{variant}'; available: {', '.join(MONA_VARIANTS)}")
        self.variant = variant
        self.bottleneck = bottleneck
        self.dropout = dropout
        self.points = None if points is None else list(points)
        self.zero_init = zero_init
        self.freq_size = tuple(freq_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = None if grid_size is None else tuple(grid_size)

    def apply(self, encoder: VisionLanguageEncoder) -> list[nn.Module]:
        """Wrap each chosen point of ``encoder`` with a :class:`MonaLayer`."""
        layers = []
        prefix = self.num_prefix_tokens
        if prefix is None:
            prefix = int(getattr(encoder, "num_prefix_tokens", 1))
        for qualified_name, channels in select_points(encoder, self.points):
            layer = MonaLayer(
                channels,
                self.bottleneck,
                self.dropout,
                self.zero_init,
                self.variant,
                freq_size=self.freq_size,
                num_prefix_tokens=prefix,
                grid_size=self.grid_size,
            )
            wrap_module(encoder, qualified_name, layer)
            layers.append(layer)
        return layers
