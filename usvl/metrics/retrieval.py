"""Image-text retrieval recall@K (image->text and text->image), with duplicate captions counted as one text.

Caption sets often repeat a caption (the lexicon captions of the embedded generator describe many images with the
same words). Texts are therefore deduplicated by caption id before ranking: an image's query is right at K when its
own caption is among the K captions most similar to it (image->text), and a caption's query is right at K when any
image it describes is among the K images most similar to it (text->image). With unique captions this is the usual
recall@K of paired retrieval (ROCO, MedPix).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["RetrievalRecall", "caption_ids", "retrieval_recall"]

DEFAULT_KS = (1, 5, 10)


def caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """Stable 63-bit ids of caption texts (equal texts, equal ids, in every process): ``long [N]``."""
    return torch.tensor([int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") >> 1
                         for text in captions], dtype=torch.long)


def retrieval_recall(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, ids: torch.Tensor,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Recall@K of image->text and text->image retrieval by cosine similarity.

    Args:
        image_embeddings: One embedding per pair, ``[N, D]``.
        text_embeddings: The embedding of each pair's caption, ``[N, D]`` (pairs with equal ``ids`` must have equal
            embeddings; the first is used).
        ids: Caption id of each pair, ``[N]`` (see :func:`caption_ids`); pairs with the same id share a caption.
        ks: The K values.

    Returns:
        ``i2t_r{K}`` and ``t2i_r{K}`` for every K, each in [0, 1]: the fraction of images (of distinct captions)
        whose own caption (one of whose images) is ranked in the top K. K larger than the gallery counts as the
        whole gallery.

    Raises:
        ValueError: The three inputs do not have the same length, or it is zero.
    """
    count = image_embeddings.shape[0]
    if count == 0 or text_embeddings.shape[0] != count or ids.shape[0] != count:
        raise ValueError(f"Expected N > 0 images, texts and ids, got {image_embeddings.shape[0]}, "
                         f"{text_embeddings.shape[0]} and {ids.shape[0]}")
    unique_ids, caption_of_pair = torch.unique(ids, return_inverse=True)
    first = torch.full((len(unique_ids),), count, dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, caption_of_pair, torch.arange(count, device=ids.device), reduce="amin")
    images = F.normalize(image_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float()[first], dim=-1)
    similarity = images @ texts.t()  # [N images, M distinct captions]
    own = similarity.gather(1, caption_of_pair[:, None])  # each image's similarity to its own caption
    # rank of the own caption among the captions (0 = first); ties count against the query
    i2t_rank = (similarity > own).sum(dim=1) + ((similarity == own).sum(dim=1) - 1)
    # for each caption: the best rank of any of its images among all images
    column = similarity.t()  # [M, N]
    positives = caption_of_pair[None, :] == torch.arange(len(unique_ids), device=ids.device)[:, None]
    best_positive = column.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
    t2i_rank = (column.masked_fill(positives, float("-inf")) >= best_positive).sum(dim=1)
    results = {}
    for k in ks:
        results[f"i2t_r{k}"] = (i2t_rank < k).float().mean()
        results[f"t2i_r{k}"] = (t2i_rank < k).float().mean()
    return results


class RetrievalRecall(Metric):
    """Accumulates image embeddings, caption embeddings and caption ids; computes :func:`retrieval_recall`.

    The whole evaluation set is ranked at once (an ``N x M`` similarity matrix), as paired retrieval is reported.

    Args:
        ks: The K values of recall@K.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
        self.ks = tuple(int(k) for k in ks)
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self.add_state("texts", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, ids: torch.Tensor) -> None:
        """Add a batch of pairs: image embeddings ``[B, D]``, caption embeddings ``[B, D]``, caption ids ``[B]``."""
        self.images.append(image_embeddings.detach().float())
        self.texts.append(text_embeddings.detach().float())
        self.ids.append(ids.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        """``i2t_r{K}`` and ``t2i_r{K}`` over every pair seen since the last reset."""
        return retrieval_recall(dim_zero_cat(self.images), dim_zero_cat(self.texts), dim_zero_cat(self.ids), self.ks)
