"""The server with our client: answers, validation, auth/health, batching and routing, shutdown, error hygiene,
non-finite guards, RemotePolicy == in-process execution."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
import torch
import websockets
import websockets.sync.client as wsc

from openlbm.serve import codec, protocol
from openlbm.serve.client import PolicyClient, RemotePolicy, ServerError
from openlbm.serve.server import ServerConfig, serve_in_thread
from openlbm.types import EnvFrame, observation_from_frames

Request = Callable[[int], dict]


@pytest.fixture(scope="module")
def server(policy: torch.nn.Module):
    with serve_in_thread(policy, ServerConfig(port=0, max_message_bytes=512 * 1024)) as srv:
        yield srv


def test_client_gets_metadata_and_the_policys_chunk(
    server, policy, random_request: Request, expected_chunk
) -> None:
    with PolicyClient(f"127.0.0.1:{server.port}") as client:
        meta = client.metadata
        emb = policy.embodiments[0]
        assert meta["default_embodiment"] == emb.name and meta["horizon"] == policy.config.horizon
        assert meta["n_action_steps"] == policy.config.n_action_steps
        spec = meta["embodiments"][emb.name]
        assert spec["observation"]["observation/state"] == {"shape": [emb.state_dim], "dtype": "float32"}
        assert spec["action"] == {
            "key": "actions",
            "shape": [policy.config.horizon, emb.action_dim],
            "dtype": "float32",
        }
        assert meta["execution"] == {**policy.execution.to_dict(), "noise_seed": 0}
        req = random_request(0)
        out = client.infer(req)
        frame_req = {k: v for k, v in req.items() if k != "episode_key"}
        step = client.infer(frame_req)["actions"]
    assert out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"], expected_chunk(req), rtol=1e-4, atol=1e-5)
    # A frame request is a control step of the connection's episode (here its first): the answer is the action
    # in-process execution takes at an episode's first step.
    assert step.shape == (1, emb.action_dim)
    frame = EnvFrame(
        {c: req[f"observation/images/{c}"] for c in emb.cameras}, req["observation/state"], req["prompt"]
    )
    policy.reset()
    with torch.inference_mode():
        first = policy.select_action(observation_from_frames([frame], emb.name))
    policy.reset()
    np.testing.assert_allclose(step[0], first[0].numpy(), rtol=1e-4, atol=1e-5)
    assert out["server_timing"]["infer_ms"] > 0 and out["server_timing"]["batch_size"] == 1


def test_every_kind_of_bad_frame_gets_an_error_and_the_connection_stays_usable(
    server, random_request: Request
) -> None:
    req = random_request(1)
    packed = codec.packb(req)
    img_key = next(k for k in req if k.startswith("observation/images/"))
    bad: dict[str, bytes | str] = {
        "truncated": packed[:-7],
        "garbage": b"\xc1garbage",
        "text frame": '{"json": "instead"}',
        "not a map": msgpack.packb(["a", 1]),
        "ext type": msgpack.packb({"x": msgpack.ExtType(3, b"\x80\x04")}),
        "object dtype": msgpack.packb(
            {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}
        ),
        "missing key": codec.packb({k: v for k, v in req.items() if k != "observation/state"}),
        "extra key": codec.packb({**req, "observation/velocity": np.zeros(3, np.float32)}),
        "wrong dtype": codec.packb({**req, img_key: req[img_key].astype(np.float32)}),
        "wrong shape": codec.packb({**req, img_key: req[img_key][:, :-1]}),
        "oversized image": codec.packb({**req, img_key: np.zeros((200, 200, 3), np.uint8)}),
        "nan state": codec.packb({**req, "observation/state": req["observation/state"] * np.nan}),
        "bad prompt": codec.packb({**req, "prompt": 3}),
    }
    with wsc.connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
        ws.recv(timeout=30)
        for name, frame in bad.items():
            ws.send(frame)
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and reply.startswith("openlbm server error"), (name, reply)
            ws.send(packed)
            assert isinstance(ws.recv(timeout=30), bytes), f"connection unusable after {name}"


def test_message_over_the_size_bound_closes_only_that_connection(server, random_request: Request) -> None:
    with (
        PolicyClient(f"127.0.0.1:{server.port}") as other,
        wsc.connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws,
    ):
        ws.recv(timeout=30)
        ws.send(b"\x00" * (600 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert other.infer(random_request(2))["actions"].ndim == 2


def test_api_key_health_and_metadata_endpoints(policy, random_request: Request) -> None:
    with serve_in_thread(policy, ServerConfig(port=0, api_key="k")) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:  # no key needed
            assert r.status == 200 and r.read() == b"OK\n"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/metadata", timeout=10)
        assert info.value.code == 401
        info.value.close()  # an unread error response would hold its socket open until the server's close timeout
        req = urllib.request.Request(base + "/metadata", headers={"Authorization": "Api-Key k"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["horizon"] == policy.config.horizon
        for key in (None, "wrong"):
            with pytest.raises(ServerError, match="unauthorized"):
                PolicyClient(f"127.0.0.1:{srv.port}", api_key=key, connect_timeout_s=5)
        with PolicyClient(f"ws://127.0.0.1:{srv.port}", api_key="k") as client:
            assert client.infer(random_request(0))["actions"].shape[0] == policy.config.horizon


def test_dynamic_batching_gives_the_unbatched_answers(
    policy, random_request: Request, expected_chunk
) -> None:
    n = 6
    reqs = [random_request(10 + i) for i in range(n)]
    want = [expected_chunk(r) for r in reqs]
    # The policy's answer depends on the observation, so a swapped reply or a misrouted observation cannot pass.
    assert min(np.abs(want[i] - want[j]).max() for i in range(n) for j in range(i)) > 1e-2
    with serve_in_thread(policy, ServerConfig(port=0, max_batch=n, max_wait_ms=200)) as srv:
        clients = [PolicyClient(f"127.0.0.1:{srv.port}") for _ in range(n)]
        for rnd in range(3):  # each round a different client goes first, so batch positions change
            order = [(i + rnd * 2) % n for i in range(n)]
            for i in order:  # all in flight before any reply is read
                clients[i].send(reqs[(i + rnd) % n])
            outs = {i: clients[i].recv() for i in order}
            for i, o in outs.items():
                np.testing.assert_allclose(o["actions"], want[(i + rnd) % n], rtol=1e-4, atol=1e-5)
            assert max(o["server_timing"]["batch_size"] for o in outs.values()) > 1
        for c in clients:
            c.close()
        assert srv.worker.batches < 3 * n, "concurrent requests were never batched"


def test_huge_state_is_refused_and_non_finite_actions_are_never_sent(policy, policy_builder, random_request) -> None:
    req = random_request(3)
    with serve_in_thread(policy, ServerConfig(port=0)) as srv, PolicyClient(f"127.0.0.1:{srv.port}") as client:
        for value in (1e30, -3e6):  # finite but absurd: 1e30 used to come back as NaN actions
            with pytest.raises(ServerError, match=r"observation/state: \|value\| .* exceeds the accepted bound"):
                client.infer({**req, "observation/state": np.full_like(req["observation/state"], value)})
        assert np.isfinite(client.infer(req)["actions"]).all()  # the connection is still usable
    broken = policy_builder()  # a corrupt checkpoint: NaN in the action output layer
    with torch.no_grad():
        broken.model.action_out[broken.embodiments[0].name].bias[0] = float("nan")
    with (
        serve_in_thread(broken, ServerConfig(port=0)) as srv,
        PolicyClient(f"127.0.0.1:{srv.port}") as client,
        pytest.raises(ServerError, match="non-finite actions for this observation; none were sent"),
    ):
        client.infer(req)


def test_errors_reach_the_client_as_one_line_and_the_traceback_stays_in_the_log(
    policy_builder, random_request, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = policy_builder()
    broken.model.action_out = torch.nn.ModuleDict()  # the model itself raises (KeyError) inside predict_chunk
    req = random_request(4)
    with serve_in_thread(broken, ServerConfig(port=0)) as srv, PolicyClient(f"127.0.0.1:{srv.port}") as client:
        with pytest.raises(ServerError) as info:
            client.infer(req)
        # A bug of the server itself (here: the request parser raising something unexpected).
        monkeypatch.setattr(protocol, "parse_observation", _raise_internal)
        with pytest.raises(ServerError) as internal:
            client.infer(req)
    for msg in (str(info.value), str(internal.value)):
        assert "\n" not in msg and "Traceback" not in msg and "File " not in msg and "/secret" not in msg, msg
        assert "details are in the server log" in msg
    assert "KeyError" in str(info.value) and "RuntimeError" in str(internal.value)
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert any(r.exc_info for r in caplog.records), logged  # the tracebacks were logged server-side


def _raise_internal(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom in /secret/server/path.py")


def test_graceful_shutdown_finishes_in_flight_requests(policy, random_request: Request) -> None:
    # A long batching window keeps the request in flight while the stop arrives.
    ctx = serve_in_thread(policy, ServerConfig(port=0, max_batch=8, max_wait_ms=1500))
    srv = ctx.__enter__()
    busy, idle = PolicyClient(f"127.0.0.1:{srv.port}"), PolicyClient(f"127.0.0.1:{srv.port}")
    busy.send(random_request(0))
    deadline = time.monotonic() + 10
    while srv._in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert srv._in_flight == 1
    stopper = threading.Thread(target=ctx.__exit__, args=(None, None, None))
    stopper.start()
    assert busy.recv()["actions"].ndim == 2  # answered, not dropped
    stopper.join(30)
    assert not stopper.is_alive()
    for c in (busy, idle):
        with pytest.raises(websockets.ConnectionClosed):
            c._ws.recv(timeout=5)
    with pytest.raises(ConnectionError):
        PolicyClient(f"127.0.0.1:{srv.port}", connect_timeout_s=1)


def _frames(step: int, b: int, policy) -> list[EnvFrame]:
    emb = policy.embodiments[0]
    frames = []
    for i in range(b):
        rng = np.random.default_rng(100 * step + i)
        images = {c: rng.integers(0, 256, (*emb.image_size, 3), dtype=np.uint8) for c in emb.cameras}
        frames.append(EnvFrame(images, rng.normal(size=emb.state_dim).astype(np.float32), f"task {i}"))
    return frames


def test_remote_policy_matches_in_process_select_action(server, policy) -> None:
    emb = policy.embodiments[0]
    with RemotePolicy(f"ws://127.0.0.1:{server.port}") as remote:
        assert remote.embodiment == emb and remote.n_action_steps == policy.config.n_action_steps
        policy.reset()
        remote.reset()
        steps = policy.config.n_action_steps + 2
        for t in range(steps):
            if t == steps - 1:  # an episode restart in slot 1 only
                policy.reset([1])
                remote.reset([1])
            obs = observation_from_frames(_frames(t, 2, policy), emb.name)
            with torch.inference_mode():
                want = policy.select_action(obs)
            got = remote.select_action(obs)
            assert got.shape == (2, emb.action_dim) and got.dtype == torch.float32
            torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5)
