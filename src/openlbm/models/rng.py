"""Per-sample random numbers for training (noise, diffusion time, augmentation).

With seeds (the trainer puts one per sample in ``batch.meta["sample_seed"]``, a function of the sample's position
in the global data stream), every number is a pure function of (the sample's seed, which draw of the step it
belongs to, its index within that draw): a counter-based generator, computed for the whole batch at once on the
batch's device by an integer hash (no generator objects, no host round trip, traceable by ``torch.compile``). The
gradients of a global batch therefore do not depend on how it is split over ranks or micro-batches, and a step is
reproducible from its seeds alone. Without seeds, draws come from torch's global RNG.

The hash: 32-bit lanes held in int64 (every product stays below 2**63, so no signed overflow on any backend),
each input folded in through a multiply-xorshift mixer (``0x45d9f3b``, the constant of Mueller's well-tested
32-bit integer hash); the element index enters as a Weyl sequence. Uniforms take the top 24 bits (exact in
float32); normals come from Box-Muller on two uniforms.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_M32 = 0xFFFF_FFFF
_GOLDEN = 0x9E37_79B9
"""2**32 / golden ratio: successive element indices land far apart before mixing."""
_U24 = 2.0**-24


def _mix32(x: Tensor) -> Tensor:
    """A bijective 32 -> 32 bit mixer on int64 tensors holding values in ``[0, 2**32)``."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def hash_bits(seeds: Tensor, stream: int, n: int) -> Tensor:
    """int64 ``[B, n]`` of 32 random bits each: element ``j`` of draw ``stream`` of the sample seeded ``seeds[b]``
    (``seeds``: int64 ``[B]``, non-negative)."""
    lo, hi = seeds & _M32, (seeds >> 32) & _M32
    key = _mix32(lo ^ _mix32(hi ^ _mix32(torch.full_like(seeds, stream & _M32))))  # [B]
    j = torch.arange(n, device=seeds.device, dtype=torch.int64)  # [n]
    return _mix32(_mix32((key[:, None] + j[None, :] * _GOLDEN) & _M32))  # [B, 1] + [1, n] -> [B, n]


def counter_uniform(seeds: Tensor, stream: int, n: int) -> Tensor:
    """float32 ``[B, n]`` uniform in ``[0, 1)`` (24-bit resolution)."""
    return (hash_bits(seeds, stream, n) >> 8).to(torch.float32) * _U24


def counter_normal(seeds: Tensor, stream: int, n: int) -> Tensor:
    """float32 ``[B, n]`` standard normal (Box-Muller on ``2n`` uniforms; tails cut at about 5.8 sigma)."""
    bits = hash_bits(seeds, stream, 2 * n) >> 8  # [B, 2n]
    u1 = (bits[:, :n] + 1).to(torch.float32) * _U24  # (0, 1]: log is finite
    u2 = bits[:, n:].to(torch.float32) * _U24
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


class SampleRNG:
    """``rand``/``randn`` of shape ``(n, ...)`` with ``n`` a multiple of the batch: rows are sample-major.

    Each call is the next *draw* (stream). Every :meth:`subset` (one embodiment's samples) starts at its parent's
    draw count, and the parent's next draw comes after the most any subset made, so a sample gets the same
    numbers whether its micro-batch mixes embodiments or not.
    """

    def __init__(self, batch: int, device: torch.device, seeds: Tensor | None = None) -> None:
        self.batch = batch
        self.device = device
        self.seeds: Tensor | None = None
        self.draws = 0
        self._high = 0  # the most draws a subset of this one has made
        self._parent: SampleRNG | None = None
        if seeds is not None:
            if seeds.numel() != batch:
                raise ValueError(f"sample_seed has {seeds.numel()} entries for a batch of {batch}")
            self.seeds = seeds.reshape(batch).to(device, torch.int64, non_blocking=True)  # [B]

    def subset(self, idx: Tensor) -> SampleRNG:
        sub = SampleRNG(len(idx), self.device)
        if self.seeds is not None:
            sub.seeds, sub.draws, sub._parent = self.seeds[idx], self.draws, self
        return sub

    def _advance(self) -> None:
        self.draws += 1
        node = self
        while node._parent is not None:
            node._parent._high = max(node._parent._high, self.draws)
            node = node._parent

    def _draw(self, shape: tuple[int, ...], normal: bool) -> Tensor:
        if self.seeds is None:
            fn = torch.randn if normal else torch.rand
            return fn(shape, device=self.device)
        if shape[0] % self.batch:
            raise ValueError(f"per-sample draw of shape {shape} is not a multiple of the batch {self.batch}")
        self.draws = max(self.draws, self._high)
        per_sample = math.prod(shape) // self.batch
        fn = counter_normal if normal else counter_uniform
        out = fn(self.seeds, self.draws, per_sample)  # [B, n/B]
        self._advance()
        return out.view(shape)  # [B, prod(shape)/B] -> shape (sample-major rows)

    def rand(self, shape: tuple[int, ...]) -> Tensor:
        return self._draw(tuple(shape), normal=False)

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        return self._draw(tuple(shape), normal=True)
