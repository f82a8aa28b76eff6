"""The interface every reranker implements, and how its score meets the dual encoder's.

A dual encoder shortlists (ITC: cosine of two independently embedded vectors); a fusion encoder
then looks at the query text and each shortlisted image together (cross-attention from text
tokens to image patch tokens, ALBEF / BLIP) and says how likely they match (ITM). The interface
is two calls, split where a cache would go:

    tokens = reranker.image_tokens(pixels)           # (B, 3, H, W) normalised -> (B, N, D) patch tokens
    p = reranker.match_probability("a red heart", tokens)   # (B, N, D) -> (B,) P(match), float32

`image_tokens` depends on the image alone, so an index can store its output once per item
(`retr index rerank-cache`, retrieval/rerank/token_cache.py; without one, tokens are recomputed
from the item's image file at query time);
`match_probability` is the per-query part. `preprocess` says how a candidate's pixels are
prepared, `name` is the spec that loads it (`hf:DIR`, `retr:itm`), and `weight` is the ITM
share of the final score, chosen on validation splits and recorded with the checkpoint.

Final score (`combine`), for a candidate with ITC cosine c in [-1, 1] and ITM probability p:

    score = weight * p + (1 - weight) * (1 + c) / 2

Both terms are put on [0, 1] (the cosine affinely), so the score stays in [0, 1] and reads the
same across queries. A weighted sum, not a rank fusion: rank fusion would throw away how sure the
ITM head is (0.99 against 0.51 is one rank either way) and the gap a cosine margin carries;
weight 0 keeps the ITC order exactly, weight 1 is ALBEF's ITM-only ranking, and in between is
BLIP's ITM-plus-ITC sum. Because both terms are affine, any scale mismatch (CLIP cosines spread
over a few hundredths, probabilities over the whole interval) is absorbed by the weight, which is
why the weight is chosen on validation data per checkpoint rather than fixed here.
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from retrieval.encoders.base import ImagePreprocess

DEFAULT_WEIGHT = 0.5  # for checkpoints that record none (an hf: BLIP folder); ITM dominates near-tied cosines


def check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"rerank weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def combine(itc: np.ndarray, itm: np.ndarray, weight: float) -> np.ndarray:
    """weight * itm + (1 - weight) * (1 + itc) / 2, elementwise; an unknown ITM (NaN: the image could
    not be read) counts as 0, no evidence of a match."""
    weight = check_weight(weight)
    itc = np.asarray(itc, np.float64)
    itm = np.nan_to_num(np.asarray(itm, np.float64), nan=0.0)
    return weight * itm + (1.0 - weight) * (1.0 + itc) / 2.0


class Reranker(abc.ABC):
    """A fusion encoder that scores (text, image) pairs: see the module docstring."""

    name: str  # the spec that loads it: "hf:/path/to/blip", "retr:itm"
    weight: float = DEFAULT_WEIGHT  # ITM share of the final score (combine), recorded with the checkpoint
    preprocess: ImagePreprocess  # how candidate images become the pixels image_tokens takes
    device: str = "cpu"

    def cache_key(self) -> str:
        """What a token cache built with this reranker is valid for (retrieval.rerank.token_cache):
        its name, plus its weights' digest where the name does not pin them."""
        return self.name

    @abc.abstractmethod
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, N, D) patch tokens (cacheable: they depend on the image alone)."""

    @abc.abstractmethod
    def match_probability(self, text: str, tokens: torch.Tensor) -> np.ndarray:
        """One text against B images' tokens (B, N, D) -> (B,) float32 P(text matches image)."""
