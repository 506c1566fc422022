"""Fine-tuning through the real loop: weights loaded / new / dropped, normalization kept for known embodiments and
recomputed for new ones (or on request), freezing, per-part and vision learning rates in the optimizer, replay
weights, and the command's argument checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openlbm.cli import main
from openlbm.configs.presets import finetune_debug
from openlbm.configs.train import FinetuneConfig
from openlbm.data.dataset import DatasetMeta
from openlbm.data.mixture import DataConfig, SourceConfig
from openlbm.train.finetune import REPORT_FILE, param_part, with_replay
from openlbm.train.loop import train


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, dataset_factory: Any) -> dict[str, Path]:
    root, make_dataset = tmp_path_factory.mktemp("ft"), dataset_factory
    return {
        # pretraining: the arm on its tasks, plus a gripper embodiment that the fine-tuning data lacks
        "arm_pre": make_dataset(root / "arm_pre", episodes=2, frames=10, seed=1),
        "gripper": make_dataset(root / "gripper", episodes=2, frames=10, state_dim=2, action_dim=1,
                                robot_type="toy_gripper", seed=2),
        # fine-tuning: the arm on other tasks with 5x larger actions, plus a new embodiment
        "arm_new": make_dataset(root / "arm_new", episodes=3, frames=10, seed=3, action_scale=5.0,
                                tasks=("stack the cups", "wipe the table", "press the switch")),
        "rover": make_dataset(root / "rover", episodes=2, frames=10, state_dim=3, action_dim=2,
                              robot_type="toy_rover", seed=4),
    }


def _cfg(run_dir: Path, *roots: Path, **kw: object):  # noqa: ANN202
    cfg = finetune_debug()
    data = replace(cfg.data, sources=tuple(SourceConfig(root=r) for r in roots))
    return replace(cfg, run_dir=run_dir, data=data, **kw)


@pytest.fixture(scope="module")
def pretrained(datasets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "run"
    return train(_cfg(run, datasets["arm_pre"], datasets["gripper"], steps=3))


def _tensors(run: Path, which: str = "model.safetensors") -> dict[str, torch.Tensor]:
    """The latest checkpoint's raw trained weights, or (``policy/model.safetensors``) the exported EMA policy."""
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / which))


def test_finetune_loads_matching_weights_reports_new_and_dropped(datasets: dict[str, Path], pretrained: Path,
                                                                 tmp_path: Path) -> None:
    run = train(_cfg(tmp_path / "ft", datasets["arm_new"], datasets["rover"], steps=2, init_from=pretrained))
    report = json.loads((run / REPORT_FILE).read_text())
    assert report["source_embodiments"] == ["toy_arm", "toy_gripper"]
    assert report["new"] and all(".toy_rover" in k for k in report["new"])
    assert report["dropped"] and all(".toy_gripper" in k for k in report["dropped"])
    assert "model.trunk.action_pos" in report["loaded"] and "model.action_out.toy_arm.weight" in report["loaded"]
    assert not set(report["loaded"]) & set(report["new"])
    # The arm's loaded projections keep the normalization they were trained with; the new rover's come from its data.
    source = json.loads((run / REPORT_FILE).read_text())["source"]
    assert report["stats"] == {"toy_arm": "pretrained", "toy_rover": "fine-tuning data"}
    assert report["stats_from"] == {"toy_arm": [str(Path(source) / "stats.json")], "toy_rover": [str(datasets["rover"])]}
    stats = _stats(run)
    new_max = np.asarray(DatasetMeta(datasets["arm_new"]).stats["action"]["max"])
    pre_max = np.asarray(DatasetMeta(datasets["arm_pre"]).stats["action"]["max"])
    assert new_max.max() > 2 * pre_max.max()  # the fixture really differs (5x actions)
    np.testing.assert_allclose(stats["toy_arm"]["action"]["max"], pre_max, rtol=1e-6)
    np.testing.assert_allclose(stats["toy_rover"]["action"]["max"],
                               DatasetMeta(datasets["rover"]).stats["action"]["max"], rtol=1e-6)
    assert set(stats) == {"toy_arm", "toy_rover"}


def _stats(run: Path) -> dict[str, Any]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / latest / "policy" / "stats.json").read_text())


def test_recompute_stats_on_request_and_resume_keeps_the_runs_stats(datasets: dict[str, Path], pretrained: Path,
                                                                     tmp_path: Path) -> None:
    new_max = np.asarray(DatasetMeta(datasets["arm_new"]).stats["action"]["max"])
    pre_max = np.asarray(DatasetMeta(datasets["arm_pre"]).stats["action"]["max"])
    ft = FinetuneConfig(recompute_stats=True)
    run = train(_cfg(tmp_path / "re", datasets["arm_new"], steps=2, init_from=pretrained, finetune=ft))
    assert json.loads((run / REPORT_FILE).read_text())["stats"] == {"toy_arm": "fine-tuning data"}
    np.testing.assert_allclose(_stats(run)["toy_arm"]["action"]["max"], new_max, rtol=1e-6)
    # A resumed fine-tuning run goes on with the stats it started with (the pretrained ones), not the data's.
    cfg = _cfg(tmp_path / "kept", datasets["arm_new"], steps=2, init_from=pretrained)
    train(cfg)
    run = train(replace(cfg, steps=4, resume=True), allow_config_change=True)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    np.testing.assert_allclose(_stats(run)["toy_arm"]["action"]["max"], pre_max, rtol=1e-6)


def test_vision_lr_mult_applies_when_fine_tuning(datasets: dict[str, Path], pretrained: Path, tmp_path: Path) -> None:
    base = _cfg(tmp_path / "v", datasets["arm_new"], steps=1, init_from=pretrained)
    policy = replace(base.policy, vision=replace(base.policy.vision, lr_mult=0.1))
    for name, ft in (("plain", FinetuneConfig()), ("parts", FinetuneConfig(trunk_lr_mult=0.5))):
        run = train(replace(base, run_dir=tmp_path / name, policy=policy, finetune=ft))
        latest = (run / "checkpoints" / "latest").read_text().strip()
        groups = json.loads((run / "checkpoints" / latest / "optimizer.json").read_text())["param_groups"]
        vision = [g for g in groups if g["name"].startswith("vision_")]
        assert vision and all(g["lr_mult"] == pytest.approx(0.1) for g in vision), groups
        assert json.loads((run / REPORT_FILE).read_text())["lr_mult"][vision[0]["name"]] == pytest.approx(0.1)


def test_subset_of_episodes_takes_its_own_stats(datasets: dict[str, Path]) -> None:
    root = datasets["arm_new"]
    full = DataConfig(sources=(SourceConfig(root=root),), num_workers=0).build(None, 1, 4, 2, seed=0)
    one = DataConfig(sources=(SourceConfig(root=root, episodes=(1,)),), num_workers=0).build(None, 1, 4, 2, seed=0)
    assert len(one.dataset) == 10 and len(full.dataset) == 30
    assert {int(one.dataset[i]["episode_index"]) for i in range(len(one.dataset))} == {1}
    from openlbm.data.dataset import LowDimStore

    actions = LowDimStore(DatasetMeta(root)).episode_columns(1, ["action"])["action"]  # [10, 4]
    np.testing.assert_allclose(one.stats["toy_arm"]["action"]["mean"], actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(one.stats["toy_arm"]["action"]["q50"], np.quantile(actions, 0.5, axis=0), rtol=1e-5)
    assert not np.allclose(one.stats["toy_arm"]["action"]["mean"], full.stats["toy_arm"]["action"]["mean"])
    with pytest.raises(ValueError, match="episodes"):
        DataConfig(sources=(SourceConfig(root=root, episodes=(7,)),)).build(None, 1, 4, 2, seed=0)


def test_freeze_keeps_weights_and_lr_mults_land_in_the_optimizer(datasets: dict[str, Path], pretrained: Path,
                                                                  tmp_path: Path) -> None:
    ft = FinetuneConfig(freeze=("vision",), trunk_lr_mult=0.5, embodiment_lr_mult=2.0)
    run = train(_cfg(tmp_path / "frozen", datasets["arm_new"], steps=3, init_from=pretrained, finetune=ft))
    before = _tensors(pretrained, "policy/model.safetensors")  # what init_from loads: the exported policy
    after, after_ema = _tensors(run), _tensors(run, "policy/model.safetensors")
    vision = [k for k in after if k.startswith("model.") and param_part(k) == "vision"]
    trunk = [k for k in after if k.startswith("model.trunk.blocks") and k.endswith("weight")]
    assert vision and trunk
    assert all(torch.equal(before[k], after[k]) for k in vision), "a frozen vision weight changed"
    assert all(torch.equal(before[k], after_ema[k]) for k in vision), "a frozen vision weight changed in the EMA"
    assert any(not torch.equal(before[k], after[k]) for k in trunk), "the trunk did not train"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    groups = json.loads((run / "checkpoints" / latest / "optimizer.json").read_text())["param_groups"]
    mults = {g["name"].split("/")[-1]: g["lr_mult"] for g in groups}
    assert "vision" not in mults  # frozen: not in the optimizer at all
    assert mults["trunk"] == 0.5 and mults["embodiment"] == 2.0 and mults["language"] == 1.0
    for g in groups:  # the schedule applies the multiplier: lr = base * lr_mult * factor
        base = next(x for x in groups if x["lr_mult"] == 1.0)
        assert g["lr"] == pytest.approx(base["lr"] * g["lr_mult"])
    report = json.loads((run / REPORT_FILE).read_text())
    assert set(report["frozen"]) == set(vision)


def test_replay_weights_and_stats(datasets: dict[str, Path], pretrained: Path, tmp_path: Path) -> None:
    # recomputed stats: the replay datasets must not enter them
    ft = FinetuneConfig(replay=(SourceConfig(root=datasets["arm_pre"]),), replay_fraction=0.25, recompute_stats=True)
    cfg = _cfg(tmp_path / "replay", datasets["arm_new"], steps=2, init_from=pretrained, finetune=ft)
    data = with_replay(cfg.data, cfg.finetune)
    assert [s.in_stats for s in data.sources] == [True, False]
    built = data.build(None, 1, 4, 2, seed=0)
    assert built.sampler.probs == pytest.approx([0.75, 0.25])
    np.testing.assert_allclose(built.stats["toy_arm"]["action"]["max"],
                               DatasetMeta(datasets["arm_new"]).stats["action"]["max"], rtol=1e-6)
    run = train(cfg)
    assert json.loads((run / REPORT_FILE).read_text())["stats_from"] == {"toy_arm": [str(datasets["arm_new"])]}


def test_finetune_knobs_need_init_from_and_command_requires_it(datasets: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="--init-from"):
        train(_cfg(tmp_path / "x", datasets["arm_new"], finetune=FinetuneConfig(freeze=("trunk",))))
    with pytest.raises(ValueError, match="replay-fraction"):
        with_replay(DataConfig(), FinetuneConfig(replay=(SourceConfig(root=datasets["arm_pre"]),)))
    assert main(["finetune", "debug", "--dataset", str(datasets["arm_new"]), "--run-dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init-from PATH is required" in err[0]  # one line, no traceback


def test_finetune_command_end_to_end(datasets: dict[str, Path], pretrained: Path, tmp_path: Path) -> None:
    run = tmp_path / "cmd"
    rc = main(["finetune", "debug", "--init-from", str(pretrained), "--dataset", str(datasets["arm_new"]),
               "--replay", str(datasets["arm_pre"]), "--finetune.replay-fraction", "0.5",
               "--finetune.freeze", "vision", "--run-dir", str(run), "--steps", "2"])
    assert rc == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["finetune"]["freeze"] == ["vision"] and saved["init_from"] == str(pretrained)
    assert saved["finetune"]["replay"][0]["in_stats"] is False
    assert (run / REPORT_FILE).is_file()
