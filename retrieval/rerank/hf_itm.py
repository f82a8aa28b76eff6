"""`hf:DIR` — a transformers BlipForImageTextRetrieval checkpoint as a `Reranker` (its ITM head).

    hf:/models/blip-itm-base-coco     a folder written by save_pretrained: config.json, weights, the
                                      BlipProcessor's files (tokenizer + preprocessor_config.json),
                                      and optionally rerank.json {"weight": W}, the ITM weight chosen
                                      on validation data (else DEFAULT_WEIGHT)

Patch tokens are the vision model's last hidden state (B, 1 + patches, D); the text encoder reads
the tokenised query with cross-attention to them and the ITM head's softmax on the first position
is P(match), as BlipForImageTextRetrieval(use_itm_head=True) computes it. A BLIP checkpoint without
a trained ITM head (a captioning or VQA one) is refused rather than scored by random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from retrieval.encoders.hf_encoder import _load_config, image_preprocess
from retrieval.rerank.base import DEFAULT_WEIGHT, Reranker, check_weight

WEIGHT_FILE = "rerank.json"


class BlipReranker(Reranker):
    def __init__(self, *, name: str, model, tokenizer, preprocess, device: str, weight: float) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.preprocess, self.device, self.weight = preprocess, device, weight
        self.max_length = model.config.text_config.max_position_embeddings

    def cache_key(self) -> str:
        """The name and a digest of the folder's weight files (a token cache must match the vision model)."""
        from indexing.manifest import file_sha256

        if not hasattr(self, "_key"):
            folder = Path(self.name.partition(":")[2]).expanduser()
            files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))
            self._key = f"{self.name}@" + ",".join(file_sha256(p)[:16] for p in files)
        return self._key

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels.to(self.device, torch.float32)).last_hidden_state

    def match_probability(self, text: str, tokens: torch.Tensor) -> np.ndarray:
        if len(tokens) == 0:
            return np.zeros(0, np.float32)
        batch = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(self.device).expand(len(tokens), -1)  # (B, T): one text, B images
        mask = batch["attention_mask"].to(self.device).expand(len(tokens), -1)
        image_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)  # (B, N)
        states = self.model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=tokens,
                                         encoder_attention_mask=image_mask).last_hidden_state  # (B, T, D)
        logits = self.model.itm_head(states[:, 0, :])  # (B, 2): [no match, match]
        return torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy().astype(np.float32)


def _weight(folder: Path) -> float:
    path = folder / WEIGHT_FILE
    if not path.is_file():
        return DEFAULT_WEIGHT
    try:
        return check_weight(json.loads(path.read_text())["weight"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} must hold {{\"weight\": W}} with W in [0, 1]: {e}") from e


def load(rest: str, device: str) -> BlipReranker:
    from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

    allow_torchvision_without_ops()  # transformers' vision models import torchvision when it is installed
    config = _load_config(rest)
    if config.model_type != "blip":
        raise ValueError(f"hf:{rest} is a {config.model_type!r} checkpoint; a reranker needs a BLIP ITM checkpoint "
                         "(BlipForImageTextRetrieval, model_type 'blip')")
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(rest)
        processor = transformers.AutoImageProcessor.from_pretrained(rest)
    except OSError as e:
        raise ValueError(f"hf:{rest} needs its BlipProcessor files beside the weights; "
                         "write them with processor.save_pretrained(folder)") from e
    model, info = transformers.BlipForImageTextRetrieval.from_pretrained(rest, output_loading_info=True)
    untrained = sorted(k for k in info["missing_keys"] if k.startswith(("itm_head", "text_encoder", "vision_model")))
    if untrained:
        raise ValueError(f"hf:{rest} has no trained image-text matching weights ({', '.join(untrained[:3])} missing); "
                         "use a BLIP retrieval checkpoint such as Salesforce/blip-itm-base-coco")
    return BlipReranker(name=f"hf:{rest}", model=model.float().to(device).eval(), tokenizer=tokenizer,
                        preprocess=image_preprocess(processor), device=device, weight=_weight(Path(rest).expanduser()))
