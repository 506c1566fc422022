"""CLI commands of this package: each a frozen dataclass (docstring per field) with ``run() -> int``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal


def load_policy(path: Path, device: str):  # -> LBMPolicy (imported lazily: keeps `lbm --help` fast)
    """Load an ``LBMPolicy.save`` dir; run dirs and checkpoint dirs are resolved to their policy dir first."""
    from openlbm.policies.lbm import LBMPolicy
    from openlbm.policies.policy_dir import resolve_policy_dir

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--policy {path}: no such directory")
    return LBMPolicy.load(resolve_policy_dir(path), device=device)


@dataclass(frozen=True)
class Serve:
    """Serve a trained policy over websockets (openpi-client compatible). Stop with Ctrl-C / SIGTERM."""

    policy: Path
    """Policy directory (``LBMPolicy.save`` output), checkpoint dir or training run dir."""
    port: int = 8000
    """TCP port (0 picks a free one; the chosen port is logged)."""
    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 exposes the server to the network (use --api-key then)."""
    api_key: str | None = None
    """Require ``Authorization: Api-Key <key>`` from clients."""
    device: str = "cpu"
    """Torch device for inference: cpu, cuda, cuda:1..."""
    max_batch: int = 1
    """Dynamic batching across concurrent clients: largest batch per model call (1 = off)."""
    max_wait_ms: float = 2.0
    """How long to hold a batch open for more requests (only with --max-batch > 1)."""
    max_message_mb: float = 8.0
    """Largest accepted request in MiB; bigger messages close that connection (code 1009)."""
    noise_seed: int | None = 0
    """The sampler's noise seed: fresh noise per chunk keyed by (seed, episode key, chunk index), the same sampler
    as in-process evaluation with the same ``EvalConfig.noise_seed`` (default 0). ``None`` uses torch's global RNG."""
    execution: Literal["sync", "async", "rtc"] = "sync"
    """How chunks become actions (``ExecutionConfig.mode``; in the metadata, run by the server for frame requests
    and by ``RemotePolicy`` for windows): ``sync`` waits for each chunk, ``async`` computes the next chunk while the
    current one executes, ``rtc`` also guides it to agree with the committed actions (flow head)."""
    delay_steps: int = 0
    """Inference delay in control steps assumed by async/rtc (``ceil(latency_ms * fps / 1000)``)."""
    rtc_beta: float = 5.0
    """RTC's guidance weight clip."""
    embodiment_schedule: bool = True
    """Serve each embodiment with its own chunk schedule where the policy config gives one (``aloha`` presets
    ensemble a chunk every step); ``--no-embodiment-schedule`` serves ``execution`` with the policy's
    ``n_action_steps`` for every embodiment (``LBMPolicy.embodiment_schedules``), e.g. async or RTC on ALOHA."""
    log_level: str = "INFO"
    """Python logging level."""

    def run(self) -> int:
        from openlbm.devices import check_device
        from openlbm.errors import UserError
        from openlbm.serve.server import PolicyServer, ServerConfig, served_executions

        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: must be 0..65535 (0 picks a free port)")
        check_device(self.device)

        logging.basicConfig(
            level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        policy = load_policy(self.policy, self.device)
        policy.embodiment_schedules = self.embodiment_schedule
        try:
            execution = replace(
                policy.default_execution(), mode=self.execution, delay_steps=self.delay_steps, rtc_beta=self.rtc_beta
            )
            served_executions(policy, execution)  # per embodiment: one with its own schedule may not fit the mode
        except ValueError as e:
            raise UserError(f"--execution {self.execution} --delay-steps {self.delay_steps}: {e}") from None
        cfg = ServerConfig(
            host=self.host,
            port=self.port,
            api_key=self.api_key,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            max_message_bytes=int(self.max_message_mb * 1024 * 1024),
            noise_seed=self.noise_seed,
            execution=execution,
        )
        PolicyServer(policy, cfg, device=self.device).run()
        return 0


COMMANDS: dict[str, type] = {"serve": Serve}
