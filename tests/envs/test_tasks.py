from __future__ import annotations

import pytest

from openlbm.envs.tasks import ALL_TASKS, TASK_SETS, instruction_for, instructions, resolve_tasks


def test_fifty_tasks_and_metaworld_splits() -> None:
    assert len(ALL_TASKS) == 50 and len(set(ALL_TASKS)) == 50
    assert len(TASK_SETS["mt10"]) == 10
    assert len(TASK_SETS["ml45_train"]) == 45 and len(TASK_SETS["ml45_test"]) == 5
    assert set(TASK_SETS["ml45_train"]).isdisjoint(TASK_SETS["ml45_test"])
    assert set(TASK_SETS["mt50"]) == set(ALL_TASKS)
    assert len(TASK_SETS["quickstart"]) == 5 and set(TASK_SETS["quickstart"]) <= set(ALL_TASKS)


def test_instructions_have_disjoint_heldout_paraphrases() -> None:
    for task in ALL_TASKS:
        train, held = instructions(task, "train"), instructions(task, "heldout")
        assert len(train) >= 3 and len(held) >= 2, task
        assert set(train).isdisjoint(held), task
    everything = [p for t in ALL_TASKS for p in instructions(t, "all")]
    assert len(everything) == len(set(everything)), "a paraphrase is shared between tasks"
    assert instruction_for("drawer-open-v3", 7) == instruction_for("drawer-open-v3", 7)
    assert instruction_for("drawer-open-v3", 7) in instructions("drawer-open-v3")


def test_resolve_tasks() -> None:
    assert resolve_tasks("mt10") == list(TASK_SETS["mt10"])
    assert resolve_tasks("reach-v3, push-v3,reach-v3") == ["reach-v3", "push-v3"]
    assert resolve_tasks(["quickstart", "reach-v3"])[-1] == "reach-v3"
    with pytest.raises(ValueError, match="unknown task or task set 'reach'.*mt10.*reach-v3"):
        resolve_tasks("reach")
    with pytest.raises(ValueError, match="no tasks"):
        resolve_tasks(" , ")
    with pytest.raises(ValueError, match="unknown task"):
        instructions("nope-v3")


def test_generate_cli_rejects_unknown_names(tmp_path, capsys) -> None:  # noqa: ANN001
    from openlbm.cli import main

    assert main(["data", "generate", "--out", str(tmp_path / "d"), "--tasks", "nope-v3"]) == 2
    assert "unknown task or task set 'nope-v3'" in capsys.readouterr().err
    assert main(["data", "generate", "--out", str(tmp_path / "d"), "--cameras", "front"]) == 2
    assert "valid cameras" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_pretraining_protocol_splits_hold_out_their_tasks() -> None:
    # The standard split: ML45 train for pretraining, its 5 test tasks never seen (asserted above: disjoint).
    # The easier split: the quickstart tasks held out, pretraining on the other 40 ML45 training tasks.
    assert set(TASK_SETS["easy_heldout"]) == set(TASK_SETS["quickstart"])
    assert set(TASK_SETS["easy_pretrain"]).isdisjoint(TASK_SETS["easy_heldout"])
    assert set(TASK_SETS["easy_pretrain"]) | set(TASK_SETS["easy_heldout"]) == set(TASK_SETS["ml45_train"])
    assert len(TASK_SETS["easy_pretrain"]) == 40
