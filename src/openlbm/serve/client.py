"""Client side of the policy server: numpy + msgpack + websockets only (no torch at import time).

- :class:`RemotePolicy` — a :class:`openlbm.types.PolicyLike` backed by a server: the observation history and the
  action queue are kept here by :class:`openlbm.policies.execution.ChunkExecutor` (the code in-process execution
  runs), and each chunk request carries the whole window, so a served policy acts exactly like an in-process one.
  This is how a robot should call the server (torch is imported lazily, only here).
- :class:`PolicyClient` — one websocket connection: ``.metadata``, ``.infer(obs) -> {"actions": [H, A], ...}``,
  reconnects when the connection drops. Works with any openpi-protocol server, not only openlbm's.
- :class:`ChunkBroker` — executes ``n_action_steps`` actions of each chunk before asking for the next one (like
  openpi's ``ActionChunkBroker``). It sends single frames, which the server takes as episode starts: exact only for
  policies with ``n_obs_steps = 1``.
- :class:`TemporalEnsembler` — ACT-style: ask every step, average all predictions for the current step with
  exponential weights (oldest prediction weighted most for ``coeff > 0``).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import websockets
import websockets.sync.client

from openlbm.serve import codec, protocol

if TYPE_CHECKING:
    import torch

    from openlbm.types import EmbodimentSpec, Observation

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


class ChunkBroker:
    """Run ``n_action_steps`` actions of each predicted chunk, then ask for a new chunk.

    ``broker.step(obs)`` calls ``infer(obs)`` only when the queue is empty. Pipelined callers use
    :attr:`needs_chunk`, :meth:`add_chunk` and :meth:`pop` directly.
    """

    def __init__(
        self, n_action_steps: int, infer: Callable[[dict], dict] | None = None, key: str = "actions"
    ):
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.n_action_steps = n_action_steps
        self._infer = infer
        self._key = key
        self._queue: deque[np.ndarray] = deque()

    @property
    def needs_chunk(self) -> bool:
        return not self._queue

    def add_chunk(self, chunk: np.ndarray) -> None:
        """Queue the first ``n_action_steps`` rows of a ``[H, A]`` chunk (replacing what is left)."""
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(f"an action chunk must be [H, A], got shape {list(chunk.shape)}")
        self._queue = deque(chunk[: self.n_action_steps])

    def pop(self) -> np.ndarray:
        if not self._queue:
            raise RuntimeError("ChunkBroker.pop() on an empty queue: add_chunk() first")
        return self._queue.popleft()

    def step(self, obs: dict) -> np.ndarray:
        if self.needs_chunk:
            if self._infer is None:
                raise RuntimeError("ChunkBroker.step() needs the infer callable given at construction")
            self.add_chunk(np.asarray(self._infer(obs)[self._key]))
        return self.pop()

    def reset(self) -> None:
        self._queue.clear()


class TemporalEnsembler:
    """ACT's temporal ensembling: query every step; the action for step t averages every chunk that covered t.

    Weights are ``exp(-coeff * i)`` with ``i = 0`` for the oldest prediction (ACT's convention; ``coeff = 0`` is a
    plain mean, larger values trust old predictions more). Averages are updated online in ``O(H * A)`` per step.
    """

    def __init__(self, coeff: float = 0.01) -> None:
        self.coeff = coeff
        self._avg: np.ndarray | None = None
        self._count: np.ndarray | None = None

    def update(self, chunk: np.ndarray) -> np.ndarray:
        """Fold in a chunk ``[H, A]`` predicted at the current step and return the action ``[A]`` to execute now."""
        chunk = np.asarray(chunk, dtype=np.float64)
        h = chunk.shape[0]
        w = np.exp(-self.coeff * np.arange(h + 1))
        wcum = np.cumsum(w)
        if self._avg is None or self._count is None:
            avg, count = chunk.copy(), np.ones(h, dtype=np.int64)
        else:
            n = min(len(self._avg), h)
            c = self._count[:n]
            avg, count = self._avg, self._count
            avg[:n] = (avg[:n] * wcum[c - 1, None] + chunk[:n] * w[c, None]) / wcum[c, None]
            count[:n] += 1
            avg = np.concatenate([avg, chunk[n:]])
            count = np.concatenate([count, np.ones(h - n, dtype=np.int64)])
        action = avg[0].astype(np.float32)
        self._avg, self._count = avg[1:], count[1:]
        return action

    def reset(self) -> None:
        self._avg = self._count = None


class RemotePolicy:
    """A served policy as a :class:`~openlbm.types.PolicyLike`: ``select_action`` / ``reset`` over websockets.

    History, action queue and chunk counting per batch slot live in a
    :class:`~openlbm.policies.execution.ChunkExecutor`, exactly as in ``LBMPolicy.select_action``; a slot whose
    queue ran out sends its whole ``n_obs_steps`` window (with ``observation/is_pad``, ``episode_key`` and
    ``chunk_index``) to the stateless server. The windows of all slots that need a chunk go out on separate connections before any reply is
    read, so the server can batch them.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        embodiment: str | None = None,
        n_action_steps: int | None = None,
        temporal_ensemble: float | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        from openlbm.policies.execution import ChunkExecutor
        from openlbm.types import EmbodimentSpec

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
        self.n_action_steps = int(n_action_steps or self.metadata["n_action_steps"])
        self.executor = ChunkExecutor(
            int(self.metadata["n_obs_steps"]),
            self.n_action_steps,
            int(self.metadata["horizon"]),
            temporal_ensemble,
            {name: self.embodiment},
        )

    def _request(self, window: Observation, j: int, episode_key: int, chunk_index: int) -> dict[str, Any]:
        from openlbm.types import hwc_from_chw

        images = {cam: hwc_from_chw(window.images[cam][j]) for cam in self.embodiment.cameras}  # [T, Hi, Wi, 3]
        state = window.state[j, :, : self.embodiment.state_dim].cpu().numpy()  # [T, S]
        is_pad = window.obs_is_pad[j].cpu().numpy() if window.obs_is_pad is not None else None
        return protocol.make_observation(
            images,
            state,
            window.instruction[j],
            embodiment=self.embodiment.name if self._send_embodiment else None,
            is_pad=is_pad,
            episode_key=episode_key,
            chunk_index=chunk_index,
        )

    def _predict(self, window: Observation, episode_key: list[int], chunk_index: list[int]) -> torch.Tensor:
        """``[n, H, A]`` for the ``n`` windows the executor needs chunks for (one connection each)."""
        import torch

        n = window.batch_size
        while len(self._clients) < n:
            self._clients.append(PolicyClient(self.url, self.api_key, connect_timeout_s=self.connect_timeout_s))
        for j in range(n):
            self._clients[j].send(self._request(window, j, episode_key[j], chunk_index[j]))
        chunks = [np.asarray(self._clients[j].recv()[protocol.ACTIONS_KEY], dtype=np.float32) for j in range(n)]
        return torch.from_numpy(np.stack(chunks)).to(window.state.device)  # [n, H, A]

    def select_action(self, obs: Observation) -> torch.Tensor:
        """``[B, A]`` for a ``T = 1`` observation of ``B`` independent envs (as ``LBMPolicy.select_action``)."""
        return self.executor.step(obs, self._predict)

    def reset(self, indices: Sequence[int] | None = None) -> None:
        """Clear history and queued actions of the given batch slots (all when None)."""
        self.executor.reset(indices)

    def close(self) -> None:
        for c in self._clients:
            c.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
