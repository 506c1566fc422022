"""Client side of the policy server: numpy + msgpack + websockets only (no torch at import time).

- :class:`RemotePolicy` — a :class:`openlbm.types.PolicyLike` backed by a server: the observation history and the
  chunk schedule are kept here by :class:`openlbm.policies.execution.ChunkExecutor` (the code in-process execution
  runs), configured from the server's metadata (``execution``), and each chunk request carries the whole window.
  In async/RTC modes a request goes out when the chunk is launched and its answer is read ``delay_steps`` later,
  so the robot keeps executing meanwhile (torch is imported lazily, only here).
- :class:`PolicyClient` — one websocket connection: ``.metadata``, ``.infer(obs) -> {"actions": ..., ...}``,
  reconnects when the connection drops. Works with any openpi-protocol server, not only openlbm's. Torch-free:
  send one frame per control step (``protocol.make_observation``) and the server executes the policy for the
  connection (``actions[0]`` is the action for this step).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import websockets
import websockets.sync.client

from openlbm.embodiment import EmbodimentSpec
from openlbm.serve import codec, protocol

if TYPE_CHECKING:
    import torch

    from openlbm.policies.execution import ChunkRequest
    from openlbm.types import Observation

log = logging.getLogger(__name__)

# websockets >= 15 warns unless connect() is used as a context manager or legacy=True is passed; older ones lack it.
_CONNECT_KW: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(websockets.sync.client.connect).parameters else {}
)


class ServerError(RuntimeError):
    """The server answered a request with an error (a text frame); the connection is still usable."""


def _normalize_url(url: str) -> str:
    return url if url.startswith(("ws://", "wss://")) else f"ws://{url}"


class PolicyClient:
    """A synchronous connection to a policy server speaking the openpi websocket protocol."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        connect_timeout_s: float = 30.0,
        reconnect_attempts: int = 3,
    ) -> None:
        self.url = _normalize_url(url)
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self._ws: websockets.sync.client.ClientConnection | None = None
        self.metadata: dict[str, Any] = self._connect()

    def _connect(self) -> dict[str, Any]:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                ws = websockets.sync.client.connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    max_size=None,
                    open_timeout=max(1.0, deadline - time.monotonic()),
                    **_CONNECT_KW,
                )
                break
            except websockets.InvalidStatus as e:
                if e.response.status_code == 401:
                    raise ServerError(f"{self.url}: unauthorized (missing or wrong API key)") from e
                raise ServerError(f"{self.url}: handshake refused with HTTP {e.response.status_code}") from e
            except (OSError, TimeoutError) as e:
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"could not connect to policy server at {self.url}: {e}") from e
                time.sleep(0.2)
        self._ws = ws
        first = ws.recv()
        if isinstance(first, str):
            raise ServerError(f"{self.url}: expected a metadata message, got text: {first[:200]}")
        metadata = codec.unpackb(first)
        if not isinstance(metadata, dict):
            raise ServerError(f"{self.url}: metadata message is not a map")
        return metadata

    def send(self, obs: Mapping[str, Any]) -> None:
        """First half of :meth:`infer`, for pipelining requests over several connections."""
        self._last = codec.packb(dict(obs))
        self._send_raw(self._last)

    def _send_raw(self, data: bytes) -> None:
        for attempt in range(self.reconnect_attempts + 1):
            try:
                assert self._ws is not None
                self._ws.send(data)
                return
            except websockets.ConnectionClosed:
                if attempt == self.reconnect_attempts:
                    raise
                log.warning("connection to %s lost; reconnecting", self.url)
                self.metadata = self._connect()

    def recv(self) -> dict[str, Any]:
        """Second half of :meth:`infer`. Raises :class:`ServerError` if the server sent an error."""
        assert self._ws is not None
        try:
            reply = self._ws.recv()
        except websockets.ConnectionClosed:
            # The request may not have been answered: reconnect and send it once more (inference is idempotent).
            log.warning("connection to %s lost while waiting for a reply; retrying once", self.url)
            self.metadata = self._connect()
            assert self._ws is not None
            self._ws.send(self._last)
            reply = self._ws.recv()
        if isinstance(reply, str):
            raise ServerError(reply)
        out = codec.unpackb(reply)
        if not isinstance(out, dict):
            raise ServerError(f"reply is not a map: {type(out).__name__}")
        return out

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Send one observation dict, return the reply (``actions`` ``[H, A]`` float32 and ``server_timing``)."""
        self.send(obs)
        return self.recv()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemotePolicy:
    """A served policy as a :class:`~openlbm.types.PolicyLike`: ``select_action`` / ``reset`` over websockets.

    History, chunk schedule and chunk counting per batch slot live in a
    :class:`~openlbm.policies.execution.ChunkExecutor` built from the server's metadata (``executions`` of this
    embodiment, else ``execution``), exactly as
    in ``LBMPolicy.select_action``; a slot that starts an inference sends its whole ``n_obs_steps`` window (with
    ``observation/is_pad``, ``episode_key``, ``chunk_index`` and, for RTC, ``action_prefix``) on its own
    connection. All slots' requests go out before any reply is read (the server can batch them), and a reply is
    only read when the executor needs the chunk.

    ``expect`` names execution settings the caller relies on (``ExecutionConfig`` fields and ``noise_seed``); one
    that differs from the server's raises ``ValueError`` instead of silently evaluating something else.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        embodiment: str | None = None,
        expect: Mapping[str, Any] | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        from openlbm.policies.execution import ChunkExecutor, ExecutionConfig

        self.url, self.api_key, self.connect_timeout_s = url, api_key, connect_timeout_s
        self._clients: list[PolicyClient] = [PolicyClient(url, api_key, connect_timeout_s=connect_timeout_s)]
        self.metadata = self._clients[0].metadata
        name = embodiment or self.metadata["default_embodiment"]
        if name not in self.metadata["embodiments"]:
            raise ValueError(
                f"server does not serve embodiment {name!r}; it serves {sorted(self.metadata['embodiments'])}"
            )
        self._send_embodiment = embodiment is not None
        self.embodiment: EmbodimentSpec = EmbodimentSpec.from_dict(
            {"name": name, **self.metadata["embodiments"][name]}
        )
        # this embodiment's execution (servers before per-embodiment schedules sent only the default one)
        served = self.metadata.get("executions", {}).get(name) or self.metadata.get("execution")
        if not isinstance(served, dict):
            raise ValueError(f"{url}: the server's metadata has no 'execution' (an older openlbm server?)")
        wrong = {k: (v, served.get(k, "<absent>")) for k, v in (expect or {}).items() if served.get(k, "<absent>") != v}
        if wrong:
            raise ValueError(f"{url} executes differently than expected (field: expected, served): {wrong}")
        self.execution = ExecutionConfig.from_dict(served)
        self.n_action_steps = self.execution.n_action_steps
        self.executor = ChunkExecutor(
            int(self.metadata["n_obs_steps"]), int(self.metadata["horizon"]), self.execution, {name: self.embodiment}
        )

    def _request(self, window: Observation, j: int, req: ChunkRequest) -> dict[str, Any]:
        from openlbm.types import hwc_from_chw

        images = {cam: hwc_from_chw(window.images[cam][j]) for cam in self.embodiment.cameras}  # [T, Hi, Wi, 3]
        state = window.state[j, :, : self.embodiment.state_dim].cpu().numpy()  # [T, S]
        is_pad = window.obs_is_pad[j].cpu().numpy() if window.obs_is_pad is not None else None
        g = req.guidance
        return protocol.make_observation(
            images,
            state,
            window.instruction[j],
            embodiment=self.embodiment.name if self._send_embodiment else None,
            is_pad=is_pad,
            episode_key=req.episode_key,
            chunk_index=req.chunk_index,
            action_prefix=None if g is None else g.prefix[:, : self.embodiment.action_dim].cpu().numpy(),
            frozen_steps=None if g is None else g.frozen,
        )

    def _predict(self, window: Observation, requests: list[ChunkRequest]) -> Callable[[], torch.Tensor]:
        """Send the ``n`` windows now (slot ``i`` on connection ``i``); the returned callable reads ``[n, H, A]``."""
        import torch

        need = max(r.slot for r in requests) + 1
        while len(self._clients) < need:
            self._clients.append(PolicyClient(self.url, self.api_key, connect_timeout_s=self.connect_timeout_s))
        for j, r in enumerate(requests):
            self._clients[r.slot].send(self._request(window, j, r))
        device = window.state.device

        def receive() -> torch.Tensor:
            chunks = [np.asarray(self._clients[r.slot].recv()[protocol.ACTIONS_KEY], np.float32) for r in requests]
            return torch.from_numpy(np.stack(chunks)).to(device)  # [n, H, A]

        return receive

    def select_action(self, obs: Observation) -> torch.Tensor:
        """``[B, A]`` for a ``T = 1`` observation of ``B`` independent envs (as ``LBMPolicy.select_action``)."""
        return self.executor.step(obs, self._predict)

    def reset(self, indices: Sequence[int] | None = None) -> None:
        """Clear history and queued actions of the given batch slots (all when None)."""
        self.executor.reset(indices)

    def frames_needed(self) -> list[bool]:
        """Per batch slot: will the next frame's images be sent (:meth:`ChunkExecutor.frames_needed`)?"""
        return self.executor.frames_needed()

    def close(self) -> None:
        for c in self._clients:
            c.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
