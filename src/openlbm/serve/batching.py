"""The inference worker: one thread owns the model; the event loop only enqueues requests and awaits futures.

Why a thread and not ``run_in_executor`` per request: the model is one device-resident object, calls into it must be
serialized anyway, and a single consumer can *batch* whatever arrived while it was busy. torch releases the GIL inside
its kernels, so the asyncio loop keeps reading, validating and answering other clients (and ``/healthz``) during a
forward pass.

Timing of one batch with ``max_batch=4, max_wait_ms=5``::

    t=0      request a arrives, worker wakes, batch=[a]
    t<5ms    b, c arrive                      batch=[a, b, c]
    t=5ms    deadline: group by shape key -> predict([a, b, c]) -> resolve 3 futures on the loop
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class InferenceResult:
    """What a request's future resolves to."""

    actions: np.ndarray
    """float32 ``[H, A]`` for this request."""
    infer_ms: float
    """Wall time of the model call that produced it (shared by the whole batch)."""
    queue_ms: float
    """Time between enqueue and the start of that model call."""
    batch_size: int


@dataclass
class _Pending:
    payload: Any
    key: Hashable
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class InferenceError(RuntimeError):
    """A request could not be answered (model error, overload, non-finite output); one line for the client."""


class InferenceWorker:
    """Serializes (and optionally batches) model calls on a dedicated thread.

    ``predict(payloads)`` receives a list of same-key payloads and returns ``[len(payloads), H, A]``.
    ``active_clients()`` (optional) tells how many clients could still send a request to join a batch.
    """

    def __init__(
        self,
        predict: Callable[[Sequence[Any]], np.ndarray],
        *,
        max_batch: int = 1,
        max_wait_ms: float = 0.0,
        max_pending: int = 1024,
        active_clients: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_pending = max_pending
        # Waiting for requests that cannot come only adds latency: with k connected clients a batch never needs
        # to wait once it holds k requests (a lone client is never delayed).
        self._active_clients = active_clients or (lambda: max_batch)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="openlbm-inference", daemon=True)
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything already queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, payload: Any, key: Hashable) -> asyncio.Future:
        """Queue one request from the running event loop; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        if self._queue.qsize() >= self.max_pending:
            raise InferenceError(
                f"server overloaded: {self.max_pending} requests already queued, retry later"
            )
        fut = loop.create_future()
        self._queue.put(_Pending(payload, key, fut, loop))
        return fut

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if len(batch) >= self._active_clients() and self._queue.empty():
                break
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            groups: dict[Hashable, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[_Pending]) -> None:
        start = time.perf_counter()
        try:
            actions = self._predict([p.payload for p in group])
        except Exception as e:  # the model failing on one batch must not kill the worker
            log.exception("inference failed for a batch of %d", len(group))
            # The traceback stays in this log; the client gets one line without stack or paths.
            err = InferenceError(f"inference failed ({type(e).__name__}); details are in the server log")
            for p in group:
                _post(p, None, err)
            return
        infer_ms = (time.perf_counter() - start) * 1000.0
        self.batches += 1
        self.requests += len(group)
        for i, p in enumerate(group):
            res = InferenceResult(actions[i], infer_ms, (start - p.enqueued) * 1000.0, len(group))
            _post(p, res, None)


def _post(p: _Pending, result: InferenceResult | None, error: BaseException | None) -> None:
    # RuntimeError: the event loop already closed (hard shutdown), so nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        p.loop.call_soon_threadsafe(_resolve, p.future, result, error)


def _resolve(fut: asyncio.Future, result: InferenceResult | None, error: BaseException | None) -> None:
    if fut.done():  # the client went away and the handler cancelled its wait
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
