"""CLIP training's objective: symmetric InfoNCE over in-batch negatives, the attribute heads' cross-entropy, one
batch's loss as one module call (for DDP), the epoch's batch order (hard negatives), and the held-out recall."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from vitrine.encoders.clip import HEAD_SCALE
from vitrine.trainer.distributed import gather_rows


def retrieval_recall(img: torch.Tensor, txt: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Image->text and text->image recall@k where pair i matches pair i; inputs are unit vectors (N, D)."""
    sims = img @ txt.T  # (N, N)
    target = torch.arange(len(img))
    kk = min(k, len(img))
    i2t = (sims.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    t2i = (sims.T.topk(kk, dim=1).indices == target[:, None]).any(1).float().mean().item()
    return {f"i2t_r@{k}": i2t, f"t2i_r@{k}": t2i, f"mean_r@{k}": (i2t + t2i) / 2}


class BatchLoss(torch.nn.Module):
    """A training batch's loss as one module call, so that DDP sees every trainable weight in one forward.

    InfoNCE runs over every rank's rows (gathered; this rank's own rows alone in one process), the attribute heads
    over this rank's shop rows (the first `n_shop` of the batch). The encoders are the trainer's, which map its
    cached inputs to unnormalised embeddings (B, D)."""

    def __init__(self, model: torch.nn.Module, heads: torch.nn.ModuleDict | None,
                 encode_image: Callable[[torch.Tensor], torch.Tensor], encode_text: Callable[[torch.Tensor], torch.Tensor],
                 attribute_weight: float) -> None:
        super().__init__()
        self.model, self.heads = model, heads
        self.encode_image, self.encode_text = encode_image, encode_text
        self.attribute_weight = attribute_weight

    def forward(self, images: torch.Tensor, texts: torch.Tensor, n_shop: int,
                labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        img = F.normalize(self.encode_image(images), dim=-1)  # (b, D)
        txt = F.normalize(self.encode_text(texts), dim=-1)  # (b, D)
        loss = info_nce(gather_rows(img), gather_rows(txt), self.model.logit_scale.exp())
        if self.heads is not None and n_shop:
            loss = loss + self.attribute_weight * attribute_loss(self.heads, img[:n_shop], labels)
        return loss


def batch_order(rows: np.ndarray, n_shop: int, types: torch.Tensor | None, run: int, rng: np.random.Generator) -> np.ndarray:
    """The epoch's row order: a shuffle, or (run > 0) shuffled runs of `run` shop rows of one article type mixed with
    runs of general rows (rows >= n_shop), so that each batch holds hard negatives."""
    if run <= 0 or types is None:
        return rng.permutation(rows)
    shop, general = rows[rows < n_shop], rows[rows >= n_shop]
    t = types[torch.from_numpy(shop)].numpy()
    chunks = []
    for value in np.unique(t):
        members = rng.permutation(shop[t == value])
        chunks += [members[s:s + run] for s in range(0, len(members), run)]
    general = rng.permutation(general)
    chunks += [general[s:s + run] for s in range(0, len(general), run)]
    order = rng.permutation(len(chunks))
    return np.concatenate([chunks[i] for i in order]) if chunks else rows


def attribute_loss(heads: torch.nn.ModuleDict, img: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the attribute heads over the fields a batch has labels for; img is (B, D) unit vectors."""
    losses = []
    for f, head in heads.items():
        y = labels[f].to(img.device)
        if (y >= 0).any():
            losses.append(F.cross_entropy(head(HEAD_SCALE * img), y, ignore_index=-100))
    return torch.stack(losses).mean() if losses else img.sum() * 0


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch negatives; img and txt are (B, D) unit vectors."""
    logits = scale * img @ txt.T  # (B, B)
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
