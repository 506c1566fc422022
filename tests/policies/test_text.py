"""The instruction-embedding cache: shared, exact, and bounded whatever prompts clients send."""

from __future__ import annotations

import tracemalloc

import torch

from openlbm.models.language import DEFAULT_CACHE_ENTRIES, CachedTextEncoder, HashTextEncoder
from openlbm.policies.config import LanguageConfig
from openlbm.policies.text import build_text_encoder


def test_cached_embeddings_equal_the_encoders_and_recent_ones_survive() -> None:
    inner = HashTextEncoder(dim=16)
    cache = CachedTextEncoder(inner, max_entries=3)
    texts = ["open the drawer", "close the drawer", "open the drawer"]
    torch.testing.assert_close(cache.encode(texts), inner.encode(texts))
    cache.encode(["a", "b"])  # 4 distinct so far: the least recently used ("close the drawer") is dropped
    assert len(cache) == 3 and "close the drawer" not in cache._cache and "open the drawer" in cache._cache
    torch.testing.assert_close(cache.encode(["close the drawer"]), inner.encode(["close the drawer"]))
    big = [f"prompt {i}" for i in range(10)]  # one call with more distinct texts than the bound: all answered
    torch.testing.assert_close(cache.encode(big), inner.encode(big))
    assert len(cache) == 3


def test_memory_stays_flat_under_10000_distinct_prompts() -> None:
    cache = build_text_encoder(LanguageConfig(encoder="hash", hash_dim=64))
    assert cache.max_entries == DEFAULT_CACHE_ENTRIES
    small = CachedTextEncoder(cache.encoder, max_entries=500)  # same class, a bound the test can fill quickly
    prompts = [f"client prompt number {i} with some padding words" for i in range(10_000)]
    for i in range(0, 1_000, 50):  # fill the cache past its bound first
        small.encode(prompts[i : i + 50])
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(1_000, 10_000, 50):
            small.encode(prompts[i : i + 50])
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(small) == 500
    # 9 000 more prompts kept unbounded would hold ~9 000 strings + tensors + dict slots (well over 1 MB).
    assert after - before < 200_000, f"Python heap grew by {after - before} bytes over 9000 new prompts"
    held = sum(t.untyped_storage().nbytes() for t in small._cache.values())
    assert held <= 500 * 64 * 4


def test_an_embedding_does_not_depend_on_what_it_was_first_batched_with() -> None:
    """Padding a short prompt to a long one's length changes its embedding's last bits; the cache keeps the first
    value it computed, so it must compute every prompt the same way (training, resume, evaluation and the server
    each meet a prompt in different company)."""
    inner = build_text_encoder(LanguageConfig(encoder="minilm")).encoder
    short = "open the drawer"
    company = ["open the drawer", "pick up the red block and put it down in the far left corner of the table"]
    alone = CachedTextEncoder(inner).encode([short])[0]
    batched = CachedTextEncoder(inner).encode(company)[0]
    assert torch.equal(alone, batched)
