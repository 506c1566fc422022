"""Websocket policy server, wire-compatible with openpi-client's ``WebsocketClientPolicy``.

Per connection: the server sends the metadata map first (:func:`openlbm.serve.protocol.build_metadata`), then answers
every binary msgpack observation with ``{"actions": [H, A], "server_timing": {...}}``. Bad frames get a text frame
explaining what was wrong and the connection stays open. The model runs on one worker thread
(:class:`~openlbm.serve.batching.InferenceWorker`) so the event loop never blocks on inference.

Two kinds of request (:mod:`openlbm.serve.protocol`): a *window* carries its whole observation history, so its
chunk depends only on that request, whatever the connection, the order or the batch it shares; a *frame* (what a
plain openpi client sends, one per control step) is executed by the connection's own
:class:`~openlbm.policies.execution.ChunkExecutor` (history, chunk schedule, ensembling, async/RTC: the code
in-process execution runs), which answers the action for this step; its chunks go through the same worker.
Errors reach the client as one short line; tracebacks stay in the server log. A non-finite action is never sent:
the client gets an error instead.

HTTP on the same port: ``GET /healthz`` -> ``200 OK`` (no key needed), ``GET /metadata`` -> the metadata as JSON.
With an API key configured every other request needs ``Authorization: Api-Key <key>`` (openpi's header) or gets 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection

from openlbm.policies.execution import ChunkExecutor, ChunkRequest, ExecutionConfig, Guidance
from openlbm.serve import codec, protocol
from openlbm.serve.batching import InferenceError, InferenceResult, InferenceWorker
from openlbm.types import EmbodimentSpec, Observation, chw_from_hwc, hwc_from_chw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How the policy server listens, authenticates, bounds input and batches."""

    host: str = "127.0.0.1"
    """Interface to bind. Loopback by default; use 0.0.0.0 to accept remote robots (set an API key then)."""
    port: int = 8000
    """TCP port; 0 picks a free one (see :attr:`PolicyServer.port`)."""
    api_key: str | None = None
    """If set, clients must send ``Authorization: Api-Key <key>``; others get HTTP 401 at the handshake."""
    max_batch: int = 1
    """Dynamic batching: at most this many concurrent same-shape requests share one model call (1 = off)."""
    max_wait_ms: float = 2.0
    """How long the worker waits for more requests to fill a batch (only when ``max_batch > 1``)."""
    max_message_bytes: int = 8 * 1024 * 1024
    """Largest accepted websocket message; a larger one closes that connection with code 1009."""
    max_pending: int = 1024
    """Queued requests beyond this are refused with an 'overloaded' error instead of growing memory."""
    shutdown_timeout_s: float = 30.0
    """On SIGINT/SIGTERM, how long in-flight requests may take to finish before connections are closed."""
    noise_seed: int | None = 0
    """The sampler's noise seed (``LBMPolicy.noise_seed``, same default as ``lbm eval``): each chunk's noise is
    drawn afresh from (this seed, the request's ``episode_key`` and ``chunk_index``), so an answer is reproducible
    and independent of batching. ``None`` draws from torch's global RNG (answers then vary from call to call)."""
    execution: ExecutionConfig | None = None
    """How chunks become actions (steps per chunk, ensembling, sync/async/RTC): run by the server for frame
    requests, by ``RemotePolicy`` for windows; in the metadata either way. ``None`` = the policy's own
    (``LBMPolicy.base_execution``). An embodiment the policy config gives its own chunk schedule
    (``PolicyConfig.embodiment_execution``) runs it with this mode, delay and RTC (metadata ``executions``)."""


class PolicyRunner:
    """Turns windows into one ``predict_chunk`` call on the device. Runs on the inference thread only."""

    def __init__(
        self, policy: torch.nn.Module, device: str | torch.device = "cpu", noise_seed: int | None = 0,
        beta: float = ExecutionConfig.rtc_beta,
    ) -> None:
        self.beta = beta
        self.policy = policy.to(device).eval()
        self.device = torch.device(device)
        if hasattr(self.policy, "noise_seed"):
            # Set on the policy object itself (shared with the caller in serve_in_thread): per-sample seeded noise
            # is what makes a batched answer equal the unbatched one.
            self.policy.noise_seed = noise_seed
        elif noise_seed is not None:
            log.warning("%s has no noise_seed attribute; its sampling noise is not seeded", type(policy).__name__)

    def __call__(self, windows: Sequence[protocol.ParsedObservation]) -> np.ndarray:
        images = {}
        for cam in windows[0].images:
            stacked = np.stack([w.images[cam] for w in windows])  # [B, T, Hi, Wi, 3]
            images[cam] = chw_from_hwc(stacked)  # [B, T, 3, Hi, Wi]
        obs = Observation(
            images=images,
            state=torch.from_numpy(np.stack([w.state for w in windows])),  # [B, T, S]
            instruction=[w.prompt for w in windows],
            embodiment=[w.embodiment for w in windows],
            obs_is_pad=torch.from_numpy(np.stack([w.is_pad for w in windows])),  # [B, T]
        )
        index, keys = [w.chunk_index for w in windows], [w.episode_key for w in windows]
        guidance = [
            None if w.action_prefix is None else Guidance(torch.from_numpy(w.action_prefix), w.frozen_steps, self.beta)
            for w in windows
        ]
        with torch.inference_mode():
            actions = self.policy.predict_chunk(
                obs.to(self.device), chunk_index=index, episode_key=keys, guidance=guidance
            )  # [B, H, A]
        return actions.float().cpu().numpy()


def policy_facts(policy: Any) -> tuple[list[EmbodimentSpec], int, int]:
    """(embodiments, horizon, n_obs_steps) of an LBMPolicy-like object."""
    specs = list(policy.embodiments)
    cfg = policy.config
    return specs, int(cfg.horizon), int(cfg.n_obs_steps)


def served_executions(policy: Any, execution: ExecutionConfig | None) -> dict[str, ExecutionConfig]:
    """Embodiment name -> how its chunks become actions: ``execution`` (default: the policy's run-time
    ``base_execution``, else its ``execution``), with an embodiment's own chunk schedule where the policy config has
    one (``LBMPolicy.execution_for``); each checked against the policy's horizon and head."""
    base = execution or getattr(policy, "base_execution", None) or policy.execution
    for_embodiment = getattr(policy, "execution_for", lambda name, ex: ex)
    out = {e.name: for_embodiment(e.name, base) for e in policy.embodiments}
    for ex in out.values():
        ex.check(int(policy.config.horizon))
        if ex.mode == "rtc" and getattr(policy.config, "head", "flow") != "flow":
            raise ValueError(f"execution mode 'rtc' needs the flow head; the served policy's is {policy.config.head!r}")
    return out


@dataclass
class _ClientStats:
    requests: int = 0
    errors: int = 0
    infer_ms_total: float = 0.0
    bytes_in: int = 0
    opened: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        mean = self.infer_ms_total / self.requests if self.requests else 0.0
        return {
            "requests": self.requests,
            "errors": self.errors,
            "mean_infer_ms": round(mean, 3),
            "bytes_in": self.bytes_in,
            "seconds": round(time.monotonic() - self.opened, 3),
        }


class PolicyServer:
    """Serves one policy to many websocket clients. ``await serve()`` or :meth:`run` (blocking, handles signals)."""

    def __init__(
        self, policy: torch.nn.Module, cfg: ServerConfig, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg
        specs, self.horizon, self.n_obs_steps = policy_facts(policy)
        self.executions = served_executions(policy, cfg.execution)
        self.specs = {s.name: s for s in specs}
        self.embodiments = {e.name: e for e in policy.embodiments}
        self.default_embodiment = specs[0].name
        self.execution = self.executions[self.default_embodiment]
        self.metadata = protocol.build_metadata(
            specs,
            horizon=self.horizon,
            n_action_steps=self.execution.n_action_steps,
            n_obs_steps=self.n_obs_steps,
            policy={"class": type(policy).__name__, "device": str(device)},
            execution={**self.execution.to_dict(), "noise_seed": cfg.noise_seed},
            executions={n: {**ex.to_dict(), "noise_seed": cfg.noise_seed} for n, ex in self.executions.items()},
            max_message_bytes=cfg.max_message_bytes,
            max_batch=cfg.max_batch,
        )
        self._metadata_bytes = codec.packb(self.metadata)
        self.worker = InferenceWorker(
            PolicyRunner(policy, device, cfg.noise_seed, self.execution.rtc_beta),
            max_batch=cfg.max_batch,
            max_wait_ms=cfg.max_wait_ms if cfg.max_batch > 1 else 0.0,
            max_pending=cfg.max_pending,
            active_clients=lambda: self._connected,
        )
        self.port: int | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._closing = False
        self._next_client = 0
        self._connected = 0

    # ------------------------------------------------------------------ HTTP side
    def _authorized(self, request: Request) -> bool:
        if self.cfg.api_key is None:
            return True
        got = request.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Api-Key {self.cfg.api_key}".encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not self._authorized(request):
            log.warning("rejected %s: missing or wrong API key", connection.remote_address)
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key ...'\n"
            )
        if path == "/metadata":
            resp = connection.respond(http.HTTPStatus.OK, json.dumps(self.metadata, indent=1) + "\n")
            resp.headers["Content-Type"] = "application/json"
            return resp
        if self._closing:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        return None

    # ------------------------------------------------------------------ websocket side
    async def _handle(self, ws: ServerConnection) -> None:
        self._next_client += 1
        name = f"client-{self._next_client}@{ws.remote_address}"
        stats = _ClientStats()
        log.info("%s connected", name)
        self._connected += 1
        # The connection's episode, for frame requests: a new connection is a new episode. One executor, for the
        # embodiment of the latest frame (a frame of another embodiment starts a new episode anyway).
        executors: dict[str, ChunkExecutor] = {}
        try:
            await ws.send(self._metadata_bytes)
            prev_total_ms: float | None = None
            async for message in ws:
                t0 = time.perf_counter()
                reply = await self._answer(message, stats, prev_total_ms, executors)
                await ws.send(reply)
                if isinstance(reply, bytes):
                    prev_total_ms = (time.perf_counter() - t0) * 1000.0
        except websockets.ConnectionClosed:
            pass
        finally:
            self._connected -= 1
            log.info(
                "%s disconnected %s",
                name,
                json.dumps(stats.summary()),
                extra={"client_stats": stats.summary()},
            )

    async def _answer(
        self, message: str | bytes, stats: _ClientStats, prev_total_ms: float | None, executors: dict[str, ChunkExecutor]
    ) -> bytes | str:
        """The reply to one frame: packed actions (bytes) or an error text."""
        stats.bytes_in += len(message)
        try:
            if self._closing:
                raise protocol.ProtocolError("server shutting down; request not processed")
            if isinstance(message, str):
                raise protocol.ProtocolError("expected a binary msgpack frame, got a text frame")
            window = protocol.parse_observation(
                codec.unpackb(message), self.specs, self.default_embodiment, self.n_obs_steps
            )
            result = await (self._step(window, executors) if window.is_frame else self._infer(window))
            if not np.isfinite(result.actions).all():
                log.error("non-finite actions for a request (state range [%g, %g]); not sent",
                          float(window.state.min()), float(window.state.max()))
                raise InferenceError("the policy produced non-finite actions for this observation; none were sent")
        except (codec.CodecError, protocol.ProtocolError, InferenceError) as e:
            stats.errors += 1
            return f"openlbm server error: {e}"
        except Exception as e:  # a bug of ours: log the traceback here, tell the client one line, keep serving
            stats.errors += 1
            log.exception("unexpected error while answering a request")
            return f"openlbm server internal error ({type(e).__name__}); details are in the server log"
        stats.requests += 1
        stats.infer_ms_total += result.infer_ms
        timing: dict[str, Any] = {
            "infer_ms": result.infer_ms,
            "queue_ms": result.queue_ms,
            "batch_size": result.batch_size,
        }
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        return codec.packb(
            {protocol.ACTIONS_KEY: np.ascontiguousarray(result.actions), protocol.TIMING_KEY: timing}
        )

    async def _step(self, frame: protocol.ParsedObservation, executors: dict[str, ChunkExecutor]) -> InferenceResult:
        """One control step of the connection's episode: the executor's action ``[1, A]`` for this frame, run with
        the frame's embodiment's execution."""
        loop = asyncio.get_running_loop()
        if frame.embodiment not in executors:
            executors.clear()
            executors[frame.embodiment] = ChunkExecutor(
                self.n_obs_steps, self.horizon, self.executions[frame.embodiment], self.embodiments
            )
        executor = executors[frame.embodiment]
        obs = Observation(
            images={c: chw_from_hwc(a[None]) for c, a in frame.images.items()},  # [1, 1, Hi, Wi, 3] -> [1, 1, 3, Hi, Wi]
            state=torch.from_numpy(frame.state[None]),  # [1, 1, S]
            instruction=[frame.prompt],
            embodiment=[frame.embodiment],
        )

        def predict(window: Observation, requests: list[ChunkRequest]) -> Any:
            futures = [
                asyncio.run_coroutine_threadsafe(self._infer(_as_window(window, j, r)), loop)
                for j, r in enumerate(requests)
            ]
            # Resolved when the executor needs the chunk: at once in sync mode, delay_steps frames later otherwise
            # (the connection keeps getting the current chunk's actions meanwhile).
            return lambda: torch.from_numpy(np.stack([f.result().actions for f in futures]))  # [n, H, A]

        def step() -> torch.Tensor:  # off the event loop: it may wait for a chunk the loop delivers
            if frame.reset:
                executor.reset()
            return executor.step(obs, predict)  # [1, A]

        t0 = time.perf_counter()
        action = await asyncio.to_thread(step)
        ms = (time.perf_counter() - t0) * 1000.0
        return InferenceResult(action.float().numpy(), ms, 0.0, 1)

    async def _infer(self, window: protocol.ParsedObservation) -> Any:
        key = window.shape_key()
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self.worker.submit(window, key)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    # ------------------------------------------------------------------ lifecycle
    async def serve(self, stop: asyncio.Event, ready: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set, then shut down gracefully (in-flight requests finish first)."""
        self._idle.set()
        self.worker.start()
        try:
            async with websockets.serve(
                self._handle,
                self.cfg.host,
                self.cfg.port,
                process_request=self._process_request,
                max_size=self.cfg.max_message_bytes,
                max_queue=4,
                compression=None,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving on ws://%s:%d (max_batch=%d)", self.cfg.host, self.port, self.cfg.max_batch)
                if ready is not None:
                    ready.set()
                await stop.wait()
                log.info("shutting down: waiting for %d in-flight request(s)", self._in_flight)
                self._closing = True
                server.server.close()  # stop accepting; open connections stay until their requests finish
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self.cfg.shutdown_timeout_s)
                server.close(close_connections=True)
                await server.wait_closed()
        finally:
            await asyncio.to_thread(self.worker.stop)
            log.info("server stopped")

    def run(self) -> None:
        """Blocking entry point for ``lbm serve``: serve until SIGINT/SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())


def _as_window(window: Observation, j: int, request: ChunkRequest) -> protocol.ParsedObservation:
    """Row ``j`` of an executor's window as a parsed window request (what ``RemotePolicy`` would have sent)."""
    g = request.guidance
    return protocol.ParsedObservation(
        embodiment=window.embodiment[j],
        images={c: hwc_from_chw(v[j]) for c, v in window.images.items()},  # [T, Hi, Wi, 3]
        state=window.state[j].numpy(),  # [T, S]
        is_pad=window.obs_is_pad[j].numpy() if window.obs_is_pad is not None else np.zeros(window.n_steps, bool),
        prompt=window.instruction[j],
        chunk_index=request.chunk_index,
        episode_key=request.episode_key,
        action_prefix=None if g is None else g.prefix.float().numpy(),
        frozen_steps=0 if g is None else g.frozen,
    )


@contextlib.contextmanager
def serve_in_thread(
    policy: torch.nn.Module, cfg: ServerConfig, device: str | torch.device = "cpu"
) -> Iterator[PolicyServer]:
    """Run a server on a background thread (tests, benchmarks, notebooks); graceful stop on exit."""
    server = PolicyServer(policy, cfg, device)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            loop.run_until_complete(server.serve(stop, ready))
        except BaseException as e:  # surfaced to the caller below
            errors.append(e)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="openlbm-server", daemon=True)
    thread.start()
    ready.wait(60)
    if errors:
        raise errors[0]
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError):  # loop already gone if serve() failed
            loop.call_soon_threadsafe(stop.set)
        thread.join(cfg.shutdown_timeout_s + 10)
