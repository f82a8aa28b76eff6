"""Contrastive losses over a batch of image and text embeddings (unit rows), with shared-concept labels.

`same[i, j]` is True when image i and text j describe the same concept (the same key), so a Noto
and a Twemoji drawing of one emoji in one batch are positives of each other's captions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def siglip_loss(
    img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor, log_t: torch.Tensor, bias: torch.Tensor,
    mask: torch.Tensor | None = None,
):
    """SigLIP (Zhai et al. 2023): an independent binary decision per (image, text) pair.

    img, txt: (B, D) unit rows; same: (B, B) bool; log_t, bias: learnable scalars; mask: (B, B)
    bool, the pairs that count (all when None).
    """
    logits = img @ txt.T * log_t.exp() + bias  # (B, B)
    labels = same.float() * 2 - 1  # +1 positive, -1 negative
    terms = -F.logsigmoid(labels * logits)
    return (terms if mask is None else terms[mask]).sum() / len(img)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor, log_scale: torch.Tensor):
    """CLIP's symmetric InfoNCE, with the target spread over every positive in the row / column."""
    logits = img @ txt.T * log_scale.exp()  # (B, B)
    target = same.float()
    i2t = F.cross_entropy(logits, target / target.sum(dim=1, keepdim=True))
    t2i = F.cross_entropy(logits.T, target.T / target.T.sum(dim=1, keepdim=True))
    return (i2t + t2i) / 2
