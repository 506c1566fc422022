from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from openlbm.configs.train import OptimConfig
from openlbm.policies.policy_dir import list_checkpoints, read_latest, resolve_policy_dir
from openlbm.train import checkpoint as ckpt
from openlbm.train.optim import build_optimizer


def test_rng_state_round_trip() -> None:
    tensors, values = ckpt.rng_state()
    values = json.loads(json.dumps(values))  # must survive JSON
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(tensors, values)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_optimizer_state_flattens_to_safetensors_and_json() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = build_optimizer([{"params": list(model.parameters()), "lr_mult": 0.5}], OptimConfig(), model)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    _, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    tensors, meta = ckpt._flatten_optimizer(osd)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    back = ckpt._unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    assert back["param_groups"][0]["lr_mult"] == 0.5 and back["param_groups"][0]["betas"] == (0.9, 0.95)
    for name, st in osd["state"].items():
        for k, v in st.items():
            assert torch.equal(back["state"][name][k], v)


def _fake_step_dirs(root: Path, steps: list[int]) -> None:
    for s in steps:
        d = root / ckpt.step_dir_name(s)
        (d / "policy").mkdir(parents=True)
        (d / "trainer.json").write_text(json.dumps({"step": s}))
        (d / "policy" / "model.safetensors").write_bytes(b"")
        (d / "policy" / "config.json").write_text("{}")


def test_prune_keeps_last_k_and_removes_stale_temp_dirs(tmp_path: Path) -> None:
    _fake_step_dirs(tmp_path, [1, 2, 3, 10])
    (tmp_path / ".tmp_step_00000011").mkdir()  # an interrupted save
    (tmp_path / "latest").write_text("step_00000010\n")
    removed = ckpt.prune_checkpoints(tmp_path, keep_last_k=2)
    assert [d.name for d in removed] == ["step_00000001", "step_00000002"]
    assert [d.name for d in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000010"]
    assert not (tmp_path / ".tmp_step_00000011").exists()
    assert read_latest(tmp_path).name == "step_00000010"
    assert ckpt.read_step(read_latest(tmp_path)) == 10


class _DiskFullOnSave:
    """Fault injection: the policy export fails half-way through a checkpoint write."""

    def save(self, d: Path) -> None:
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
        raise OSError("No space left on device")


class _Export:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def save(self, d: Path) -> None:
        from safetensors.torch import save_file

        d.mkdir(parents=True)
        save_file(dict(self.model.state_dict()), str(d / "model.safetensors"))
        (d / "config.json").write_text("{}")


def test_save_is_atomic_and_load_restores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer([{"params": list(model.parameters())}], OptimConfig(), model)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, ckpt.TrainState(step=1, samples_seen=4, sampler={"consumed": 4}), model, opt, None,
                         _Export(model), keep_last_k=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    opt.step()
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(root, ckpt.TrainState(step=2), model, opt, None, _DiskFullOnSave(), keep_last_k=2)
    # the failed write left no step dir and did not move `latest`
    assert [d.name for d in list_checkpoints(root)] == ["step_00000001"]
    assert read_latest(root).name == "step_00000001"
    assert resolve_policy_dir(root.parent / "checkpoints" / "step_00000001").name == "policy"

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = build_optimizer([{"params": list(fresh.parameters())}], OptimConfig(), fresh)
    state = ckpt.load_checkpoint(read_latest(root), fresh, fresh_opt, None)
    assert (state.step, state.samples_seen, state.sampler) == (1, 4, {"consumed": 4})
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k])
    with pytest.raises(ValueError, match="does not match this model"):
        bigger = torch.nn.Linear(3, 5)
        ckpt.load_checkpoint(read_latest(root), bigger, torch.optim.AdamW(bigger.parameters()), None)


def test_config_changes_lists_dotted_paths_and_skips_resume_free_fields() -> None:
    old = {"steps": 10, "resume": False, "optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "log": {"every": 1},
           "data": {"sources": [{"root": "a", "weight": 1.0}], "num_workers": 0}}
    new = {"steps": 20, "resume": True, "optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "log": {"every": 5},
           "data": {"sources": [{"root": "b", "weight": 1.0}], "num_workers": 4}}
    assert sorted(ckpt.config_changes(old, new)) == [
        "data.sources[0].root: 'a' -> 'b'", "optim.betas[1]: 0.95 -> 0.99", "steps: 10 -> 20",
    ]
    assert ckpt.config_changes(old, old) == []
