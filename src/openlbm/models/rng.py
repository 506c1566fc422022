"""Per-sample random numbers for training (noise, diffusion time, augmentation).

With seeds (the trainer puts one per sample in ``batch.meta["sample_seed"]``, a function of the sample's position
in the global data stream), each sample draws from its own generator, so the gradients of a global batch do not
depend on how it is split over ranks or micro-batches. Without seeds, draws come from torch's global RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SampleRNG:
    """``rand``/``randn`` of shape ``(n, ...)`` with ``n`` a multiple of the batch: rows are sample-major."""

    def __init__(self, batch: int, device: torch.device, seeds: Tensor | None = None) -> None:
        self.batch = batch
        self.device = device
        self.gens: list[torch.Generator] | None = None
        if seeds is not None:
            if seeds.numel() != batch:
                raise ValueError(f"sample_seed has {seeds.numel()} entries for a batch of {batch}")
            self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]

    def subset(self, idx: Tensor) -> SampleRNG:
        sub = SampleRNG(len(idx), self.device)
        if self.gens is not None:
            sub.gens = [self.gens[i] for i in idx.tolist()]
        return sub

    def _draw(self, shape: tuple[int, ...], normal: bool) -> Tensor:
        if self.gens is None:
            fn = torch.randn if normal else torch.rand
            return fn(shape, device=self.device)
        if shape[0] % self.batch:
            raise ValueError(f"per-sample draw of shape {shape} is not a multiple of the batch {self.batch}")
        per = (shape[0] // self.batch, *shape[1:])
        fn = torch.randn if normal else torch.rand
        return torch.cat([fn(per, generator=g) for g in self.gens]).to(self.device)

    def rand(self, shape: tuple[int, ...]) -> Tensor:
        return self._draw(tuple(shape), normal=False)

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        return self._draw(tuple(shape), normal=True)
