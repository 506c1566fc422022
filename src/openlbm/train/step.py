"""One optimizer step (:func:`train_step`) and what it needs: global-batch loss weighting, the non-finite check.

Loss averaging: every rank's micro-batch loss is a mean over its own elements (for the policy: a masked mean over
its valid action elements, :func:`loss_weight`). To get the mean over the *global* batch (so that N ranks x M
micro-batches give exactly the gradient of one big batch), each micro-batch loss is weighted by ``its element
count * world_size / global element count`` before backward; DDP/FSDP then average the gradients over ranks.

No host reads: a step leaves its metrics on the device, and whether a loss or the gradient norm was NaN/inf (on any
rank: the flag is summed over ranks with the losses, in one collective) is a device flag too. The loop reads it only
at steps that read the device anyway (:class:`NonFiniteWatch`), so every rank stops at the same step.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from openlbm.configs.train import TrainConfig
from openlbm.errors import UserError
from openlbm.train import distributed as dist_utils
from openlbm.types import Batch


class NonFiniteLossError(UserError, RuntimeError):
    """The loss or gradient norm became NaN/inf; training stopped before the optimizer step."""


class LossModule(nn.Module):
    """``forward(batch) = policy.compute_loss(batch)``, so that DDP's gradient hooks see the training call.

    ``validated``: the batches were checked already (the loop validates them on the host), so a policy whose
    ``compute_loss`` takes ``validate`` skips its own checks, which read the device."""

    def __init__(self, policy: nn.Module, validated: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self.validated = validated and "validate" in inspect.signature(policy.compute_loss).parameters

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.validated:
            return self.policy.compute_loss(batch, validate=False)
        return self.policy.compute_loss(batch)


def loss_weight(batch: Batch) -> Tensor:
    """Number of action elements the policy's masked-mean loss averages over (valid steps x real action dims)."""
    valid_steps = (~batch.action_is_pad).sum(dim=1)  # [B]
    real_dims = batch.action_dim_mask.sum(dim=1)  # [B]
    return (valid_steps * real_dims).sum().to(torch.float64)


def _batch_where(batch: Batch) -> str:
    return _meta_where(batch.meta)


def _meta_where(meta: dict[str, Any]) -> str:
    parts = []
    for key in ("episode_index", "index", "dataset"):
        v = meta.get(key)
        if v is not None:
            v = v.tolist() if isinstance(v, Tensor) else list(v)
            parts.append(f"{key}={v[:16]}{'...' if len(v) > 16 else ''}")
    return ", ".join(parts) or "(batch.meta has no indices)"


def model_weight_fn(model: nn.Module) -> Callable[[Batch], Tensor | dict[str, Tensor]]:
    """The trained model's own ``loss_weight`` (through DDP's ``.module`` and :class:`LossModule`), else
    :func:`loss_weight` (valid action elements)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "policy", inner)
    return getattr(inner, "loss_weight", loss_weight)


def _terms(x: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
    """A model's loss (or element count): one tensor, or one per objective (``{"action": ..., "latent": ...}``)."""
    return dict(x) if isinstance(x, dict) else {"loss": x}


NONFINITE = "nonfinite"
"""Key of :func:`train_step`'s flag: 1.0 when a loss or the gradient norm was NaN/inf on any rank at that step."""


def train_step(
    model: nn.Module,
    micro_batches: list[Batch],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step: int,
    autocast: contextlib.AbstractContextManager | None = None,
    weight_fn: Callable[[Batch], Tensor | dict[str, Tensor]] | None = None,
    check_finite: bool = True,
) -> dict[str, Tensor]:
    """One optimizer step over this rank's micro-batches; returns metrics averaged over the global batch.

    The model's loss is one tensor or one per objective, each a mean over ``weight_fn(batch)`` elements (the
    model's ``loss_weight``; one count per objective). Each objective is averaged over the *global* batch on its
    own (an objective absent from the whole global batch, e.g. no row with actions, contributes nothing), then
    the objectives are summed with ``cfg.objectives`` weights. Metrics (0-d tensors on the device: nothing is read
    back to the host): ``loss`` (the weighted sum), with several objectives ``loss/<objective>`` (NaN where absent
    from the global batch), ``grad_norm``, the model's own, and :data:`NONFINITE`.

    ``check_finite``: read the non-finite flag (one host sync; the flag is summed over ranks, so every rank
    decides alike) and raise :class:`NonFiniteLossError` naming the step and the batch's episode/frame indices
    before touching the weights. The loop checks only at steps that sync anyway (see :func:`train`).
    """
    world = dist_utils.world_size()
    device = micro_batches[0].action.device
    weight_fn = weight_fn or model_weight_fn(model)
    weights = [{k: v.to(device, torch.float64) for k, v in _terms(weight_fn(b)).items()} for b in micro_batches]
    names = sorted({k for w in weights for k in w})
    zero = torch.zeros((), dtype=torch.float64, device=device)
    totals = dist_utils.all_reduce_sum(torch.stack([sum((w.get(k, zero) for w in weights), zero) for k in names]))
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)  # per-objective loss sums, non-finite count
    seen: list[tuple[int, str, Tensor]] = []  # (micro-batch, objective, loss): to name the culprit on error
    metric_sums: dict[str, Tensor | float] = {}
    for i, (batch, w) in enumerate(zip(micro_batches, weights, strict=True)):
        # gradients are reduced over ranks once per step: on the last micro-batch's backward
        with dist_utils.gradient_sync(model, i == len(micro_batches) - 1):
            with autocast or contextlib.nullcontext():
                out, metrics = model(batch)
            losses = _terms(out)
            if set(losses) - set(names):
                raise RuntimeError(f"the model returned losses {sorted(losses)} but element counts for {names}")
            objective = sum(losses.values()) * 0.0  # keeps every output in the graph (DDP expects all to be used)
            for j, k in enumerate(names):
                loss = losses.get(k)
                if loss is None or k not in w:
                    continue
                # an objective this micro-batch lacks has weight 0 (and a 0 masked-mean loss): it adds nothing
                scale = (w[k] * world / totals[j].clamp(min=1)).to(loss.dtype) * cfg.objectives.weight(k)
                objective = objective + loss * scale
                value = loss.detach().to(torch.float64)
                sums[j] += value * w[k]
                sums[-1] += ((w[k] > 0) & ~torch.isfinite(value)).to(torch.float64)
                seen.append((i, k, value))
            objective.backward()
        for k, v in metrics.items():
            metric_sums[k] = metric_sums.get(k, 0.0) + (v.detach() if isinstance(v, Tensor) else v) / len(micro_batches)
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    sums[-1] += (~torch.isfinite(grad_norm)).to(torch.float64) / world  # the same norm on every rank: count it once
    sums = dist_utils.all_reduce_sum(sums)  # one collective: the losses and the non-finite flag of every rank
    nonfinite = (sums[-1] > 0).to(torch.float32)
    if check_finite and bool(nonfinite):
        raise NonFiniteLossError(_nonfinite_message(step, micro_batches, seen, grad_norm))
    optimizer.step()
    present = totals > 0
    means = torch.where(present, sums[:-1] / totals.clamp(min=1), torch.nan)  # NaN: absent from the global batch
    loss = sum((cfg.objectives.weight(k) * torch.nan_to_num(means[j], nan=0.0) for j, k in enumerate(names)), zero)
    out = {**metric_sums, "loss": loss, "grad_norm": grad_norm.detach(), NONFINITE: nonfinite}
    if names != ["loss"]:
        out.update({f"loss/{k}": means[j] for j, k in enumerate(names)})
    return out  # type: ignore[return-value]


def _nonfinite_message(step: int, batches: list[Batch], seen: list[tuple[int, str, Tensor]], grad_norm: Tensor) -> str:
    """Which loss (or the gradient norm) was not finite, in which micro-batch and batch (this rank's view)."""
    tail = "Stopped before the optimizer step; the last good checkpoint is kept."
    for i, k, value in seen:
        if not bool(torch.isfinite(value)):
            return (f"loss{'' if k == 'loss' else ' ' + k} is {value.item()} at step {step} (micro-batch {i}, rank "
                    f"{dist_utils.rank()}); batch: {_batch_where(batches[i])}. {tail}")
    if not bool(torch.isfinite(grad_norm)):
        return (f"gradient norm is {grad_norm.item()} at step {step}; batches: "
                + "; ".join(_batch_where(b) for b in batches) + f". {tail}")
    return f"a loss on another rank was not finite at step {step} (see that rank's error). {tail}"


class NonFiniteWatch:
    """The first step whose loss or gradient norm was not finite on any rank, kept on the device (no host read
    per step), with the batch indices of the steps since the last check (host-side, to name the culprit)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.pending: dict[int, list[dict[str, Any]]] = {}

    def add(self, step: int, flag: Tensor, batches: list[Batch]) -> None:
        self.first = torch.where((self.first < 0) & (flag > 0), step, self.first)
        self.pending[step] = [b.meta for b in batches]  # host-side indices only; the batches' tensors are freed

    def check(self, now: int) -> None:
        """Raise :class:`NonFiniteLossError` if a step since the last check was flagged (one host read)."""
        first = int(self.first)
        if first >= 0:
            where = "; ".join(_meta_where(m) for m in self.pending.get(first, []))
            raise NonFiniteLossError(
                f"the loss or gradient norm was not finite at step {first} (on some rank; seen at step {now}, the "
                f"first check after it); batches: {where or '(unknown)'}. Steps since then are not saved: the last "
                "good checkpoint is kept."
            )
        self.pending.clear()


def _validate(batch: Batch) -> None:
    try:
        batch.validate()
    except ValueError as e:
        raise ValueError(f"a training batch breaks the Batch contract (openlbm.types.Batch): {e}; batch: "
                         f"{_batch_where(batch)}") from e
