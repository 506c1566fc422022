"""Training metrics: ``metrics.jsonl`` (always), TensorBoard and W&B (optional), and a rich progress bar.

Only rank 0 makes a :class:`MetricsLogger`; other ranks get :class:`NullLogger`. Each JSONL line is one log step:
``{"step", "loss", "lr", "samples_per_s", "data_wait_frac", "grad_norm", ...}``; evaluation results are logged as
``eval/<name>`` keys on their own line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from openlbm.configs.train import LogConfig

log = logging.getLogger(__name__)


class MetricsLogger:
    """Writes metrics to every enabled sink and drives the progress bar."""

    def __init__(self, run_dir: Path, cfg: LogConfig, total_steps: int, start_step: int, config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.file = (run_dir / "metrics.jsonl").open("a")
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
            except ImportError:
                log.warning("tensorboard is not installed: skipping TensorBoard logging (pip install tensorboard)")
        self.wandb = None
        if cfg.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config, resume="allow",
                                        name=run_dir.name)
            except ImportError:
                log.warning("wandb is not installed: skipping W&B logging (pip install wandb)")
        self.progress: Progress | None = None
        if cfg.progress:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self.tb.add_scalar(k if "/" in k else f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if "loss" in metrics:
            log.debug("step %d %s", step, row)

    def advance(self, step: int, loss: float, samples_per_s: float, data_wait_frac: float) -> None:
        if self.progress is not None:
            info = f"loss {loss:.4f}  {samples_per_s:.1f} samples/s  data-wait {100 * data_wait_frac:.0f}%"
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class NullLogger:
    """What non-zero ranks log to: nothing."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def advance(self, step: int, loss: float, samples_per_s: float, data_wait_frac: float) -> None:
        pass

    def close(self) -> None:
        pass


class Meter:
    """Running sums between log steps: metrics, wall time, samples, and where the wall time went: blocked on the
    data loader (``data_wait_frac``), preparing batches on the host (validation, text embeddings, seeds, the copy
    to the device: ``host_frac``) and in the train step + EMA update (``step_frac``; on CPU the computation, on a
    GPU launching it: the device runs asynchronously and shows up at the next read).

    Tensor metrics (a train step's, on the device) are summed on the device: nothing is read back until
    :meth:`summary`, once per log step. A NaN tensor value means "absent from that step" (an objective the
    global batch lacked) and is not counted.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.data_s = 0.0
        self.host_s = 0.0
        self.step_s = 0.0
        self.samples = 0
        self.steps = 0
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}  # per metric: an objective absent from a step has no value there

    def add(self, metrics: dict[str, Any], samples: int, data_s: float, host_s: float = 0.0, step_s: float = 0.0
            ) -> None:
        self.steps += 1
        self.samples += samples
        self.data_s += data_s
        self.host_s += host_s
        self.step_s += step_s
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().to(torch.float64)
                have = ~torch.isnan(v)
                v, n = torch.where(have, v, 0.0), have.to(torch.float64)
            else:
                v, n = float(v), 1
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts[k] + n if k in self.counts else n

    def rates(self) -> tuple[float, float]:
        """(samples per second, share of wall time waiting for data) since the last reset: host clocks only."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        return self.samples / elapsed, self.data_s / elapsed

    def summary(self) -> dict[str, float]:
        """Means since the last reset (reads the device once, for all tensor metrics together)."""
        keys = list(self.sums)
        tensors = [k for k in keys if isinstance(self.sums[k], torch.Tensor) or isinstance(self.counts[k], torch.Tensor)]
        values = dict(zip(keys, ((self.sums[k], self.counts[k]) for k in keys), strict=True))
        if tensors:
            flat = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=_device(self.sums, tensors))
                                for k in tensors for x in values[k]]).tolist()
            values.update({k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(tensors)})
        out = {k: s / c for k, (s, c) in values.items() if c}
        out["samples_per_s"], out["data_wait_frac"] = self.rates()
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        out["host_frac"], out["step_frac"] = self.host_s / elapsed, self.step_s / elapsed
        return out


def _device(sums: dict[str, Any], keys: list[str]) -> torch.device:
    return next(sums[k].device for k in keys if isinstance(sums[k], torch.Tensor))


def _finite(v: Any) -> Any:
    """JSON has no NaN/inf; keep them readable as strings rather than writing invalid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
