"""Language conditioning: a frozen sentence encoder (outside the module tree) + a trainable projection.

The frozen encoder is *not* an ``nn.Module`` child: it is never saved in ``model.safetensors``, never in the
optimizer, never moved by ``.to()``, never copied by EMA's ``deepcopy``. The policy config records which encoder
it was, and loading rebuilds it from its package/path. Embeddings are cached per instruction string (the same few
strings recur millions of times in training) in a bounded LRU (a server's clients may send any number of prompts).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class TextEncoder(Protocol):
    """Frozen ``list[str] -> float32 [N, dim]`` (CPU) embedding function."""

    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> Tensor: ...


class HashTextEncoder:
    """Deterministic hashed bag-of-words through a fixed random projection (no model load: tests, debug preset).

    Words are lowercased alphanumeric runs; each hashes (blake2b, stable across processes) into one of
    ``buckets`` counts; the counts go through a fixed seeded Gaussian matrix and are L2-normalized.
    """

    def __init__(self, dim: int = 64, buckets: int = 1024, seed: int = 0) -> None:
        self.dim = dim
        self.buckets = buckets
        self.name = f"hash-{dim}"
        gen = torch.Generator().manual_seed(seed)
        self._proj = torch.randn(buckets, dim, generator=gen) / dim**0.5  # [buckets, dim]

    def _bucket(self, word: str) -> int:
        return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % self.buckets

    def encode(self, texts: Sequence[str]) -> Tensor:
        counts = torch.zeros(len(texts), self.buckets)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                counts[i, self._bucket(word)] += 1.0
        emb = counts @ self._proj  # [N, buckets] @ [buckets, dim] -> [N, dim]
        return torch.nn.functional.normalize(emb, dim=-1)


DEFAULT_CACHE_ENTRIES = 4096
"""Instruction embeddings kept by :class:`CachedTextEncoder`: at 384-d float32 about 1.5 KiB each (6 MiB in all),
far more than the distinct instructions of any training mixture (Meta-World MT50 has a few hundred)."""


class CachedTextEncoder:
    """Memoizes another encoder per string in an LRU of at most ``max_entries`` embeddings (least recently used
    ones are dropped, so memory is bounded whatever prompts arrive). Shared, never copied: ``deepcopy`` (EMA)
    returns the same object."""

    def __init__(self, encoder: TextEncoder, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.encoder = encoder
        self.dim = encoder.dim
        self.name = encoder.name
        self.max_entries = max_entries
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> Tensor:
        with self._lock:
            found = {t: self._cache[t] for t in set(texts) if t in self._cache}
            missing = sorted(set(texts) - found.keys())
            for text in missing:
                # one string at a time: encoded in a padded batch, a string's embedding changes in its last bits
                # with whatever it was batched with, and a cache would keep the first batch's floats, so training,
                # a resumed run, an evaluation and the server could each see different ones
                found[text] = self.encoder.encode([text])[0].detach().float().cpu().clone()  # own storage
            for text in texts:  # refresh recency (and insert the new ones)
                self._cache[text] = found[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
            return torch.stack([found[t] for t in texts])  # [N, dim]

    def __len__(self) -> int:
        return len(self._cache)

    def __deepcopy__(self, memo: dict[int, Any]) -> CachedTextEncoder:
        return self


class LanguageProjection(nn.Module):
    """Frozen embedding ``[B, E]`` -> one trainable language token ``[B, dim]``."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, emb: Tensor) -> Tensor:
        return self.net(emb)
