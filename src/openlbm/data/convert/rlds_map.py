"""Which RLDS keys become which LeRobot v3 features: the per-dataset key map and the default rule.

The shipped table ``oxe_keymap.json`` (common Open X-Embodiment datasets) is merged with an optional user file
of the same schema (``--keymap FILE``), field by field. For a dataset the entry ``"<name>/<version>"`` is layered
over ``"<name>"`` (its fields win); any field neither has follows the default rule:

- cameras: every ``Image`` under ``steps/observation/`` -> ``observation.images.<path below observation, / -> _>``;
- state: ``steps/observation/state`` if present, else every numeric 0-/1-D tensor under ``steps/observation/`` in
  alphabetical order, concatenated; ``"state": []`` writes no ``observation.state``;
- action: ``steps/action`` (a ``FeaturesDict`` action is its leaves in alphabetical order, concatenated);
- task: the first of ``steps/language_instruction``, ``steps/observation/natural_language_instruction``,
  ``steps/observation/language_instruction``, ``episode_metadata/language_instruction`` that exists; an episode
  without one (or with only empty strings) gets ``default_task`` (default: the dataset name);
- extra: every other numeric 0-/1-D tensor under ``steps/observation/`` -> ``observation.<path, / -> .>`` (except
  one that would be named ``observation.state`` while the state comes from other keys);
- ``steps/reward`` (if a numeric scalar) -> ``next.reward``; fps 10 and robot_type "" unless given.
State, action and extra values are cast to float32 (bools to 0/1) and flattened per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openlbm.data.convert.source import SourceError
from openlbm.data.convert.tfds_meta import NUMERIC, Leaf, TFDSInfo

SHIPPED_KEYMAP = Path(__file__).with_name("oxe_keymap.json")
DEFAULT_FPS = 10.0
TASK_CANDIDATES = (
    "steps/language_instruction",
    "steps/observation/natural_language_instruction",
    "steps/observation/language_instruction",
    "episode_metadata/language_instruction",
)
_OBS = "steps/observation/"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": str, "robot_type": str, "fps": (int, float), "cameras": dict, "state": list, "action": list,
    "task": str, "default_task": str, "extra": dict,
}


@dataclass(frozen=True)
class Mapping:
    """The resolved mapping of one dataset (every key checked against ``features.json``)."""

    cameras: tuple[tuple[str, str], ...]
    """``(rlds key, v3 key)`` per camera, v3 key ``observation.images.<cam>``."""
    state: tuple[str, ...]
    """RLDS keys concatenated (in this order) into ``observation.state``; empty: no state feature."""
    action: tuple[str, ...]
    """RLDS keys concatenated into ``action``."""
    task: str | None
    """RLDS key of the instruction (step- or episode-level text, or int code points); None: ``default_task``."""
    default_task: str
    """Instruction of episodes without one."""
    extra: tuple[tuple[str, str], ...]
    """``(rlds key, v3 key)`` of the other numeric features."""
    reward: str | None
    """RLDS key written as ``next.reward``."""
    fps: float
    robot_type: str


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: expected an object of fields, got {type(entry).__name__}")
    for field, value in entry.items():
        if field not in _FIELDS:
            raise SourceError(f"{where}: unknown field {field!r} (known: {', '.join(_FIELDS)})")
        if not isinstance(value, _FIELDS[field]) or isinstance(value, bool):
            raise SourceError(f"{where}.{field}: expected {_FIELDS[field]}, got {value!r}")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        if any(not isinstance(v, str) for _, v in items):
            raise SourceError(f"{where}.{field}: every key and value must be a string, got {value!r}")
    return entry


def load_keymap(user: Path | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Merged ``{dataset: entry}`` (user fields over shipped ones) and ``{dataset: file it came from}``."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for path in (SHIPPED_KEYMAP, *([Path(user)] if user is not None else [])):
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SourceError(f"{path}: keymap file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SourceError(f"{path}: keymap is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), dict):
            raise SourceError(f"{path}: a keymap is {{\"datasets\": {{\"<name>\": {{...}}}}}} (see docs/dataset.md)")
        for name, entry in doc["datasets"].items():
            merged.setdefault(name, {}).update(_check_entry(entry, f"{path}: datasets.{name}"))
            origin[name] = str(path)
    return merged, origin


def _expand(info: TFDSInfo, key: str, where: str) -> list[Leaf]:
    """The leaves a key names: itself, or the leaves of the FeaturesDict it names (alphabetical)."""
    if key in info.leaves:
        return [info.leaves[key]]
    below = sorted(k for k in info.leaves if k.startswith(key + "/"))
    if not below:
        raise SourceError(f"{where}: key {key!r} is not in {info.root / 'features.json'}")
    return [info.leaves[k] for k in below]


def _numeric(leaf: Leaf, where: str) -> Leaf:
    if leaf.kind != "tensor" or leaf.dtype not in NUMERIC or None in leaf.shape or not leaf.per_step:
        raise SourceError(
            f"{where}: key {leaf.key!r} is {leaf.kind} {leaf.dtype} {leaf.shape} "
            f"({'per step' if leaf.per_step else 'per episode'}); expected a per-step numeric tensor of known shape"
        )
    return leaf


def _is_small_numeric(leaf: Leaf) -> bool:
    return (leaf.kind == "tensor" and leaf.dtype in NUMERIC and leaf.per_step and len(leaf.shape) <= 1
            and None not in leaf.shape)


def short_key(key: str) -> str:
    """``steps/observation/a/b`` -> ``a/b``; ``steps/action`` -> ``action``; other keys unchanged."""
    for prefix in (_OBS, "steps/"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def resolve(info: TFDSInfo, keymap: Path | None = None) -> Mapping:
    """Resolve the mapping of ``info``'s dataset (keymap entry + default rule); raise on unknown or unfit keys."""
    table, origin = load_keymap(keymap)
    names = [n for n in (info.name, f"{info.name}/{info.version}") if n in table]
    entry = {k: v for n in names for k, v in table[n].items()}  # the versioned entry's fields win
    where = f"{origin[names[-1]]}: datasets.{names[-1]}" if names else f"{info.root}: default mapping"
    leaves = info.leaves

    if "cameras" in entry:
        cameras = []
        for key, cam in entry["cameras"].items():
            leaf = _expand(info, key, f"{where}.cameras")[0]
            if leaf.kind != "image" or leaf.key != key:
                raise SourceError(f"{where}.cameras: key {key!r} is {leaf.kind}, not an Image feature")
            cameras.append((key, f"observation.images.{cam}"))
    else:
        cameras = [(k, "observation.images." + short_key(k).replace("/", "_")) for k, leaf in leaves.items()
                   if leaf.kind == "image" and k.startswith(_OBS) and leaf.shape[-1:] in ((3,), (None,))]

    if "state" in entry:
        state = [_numeric(leaf, f"{where}.state").key for k in entry["state"] for leaf in _expand(info, k, where)]
    elif f"{_OBS}state" in leaves:
        state = [_numeric(leaves[f"{_OBS}state"], where).key]
    else:
        state = sorted(k for k, leaf in leaves.items() if k.startswith(_OBS) and _is_small_numeric(leaf))

    action_keys = entry.get("action", ["steps/action"])
    action = [_numeric(leaf, f"{where}.action").key for k in action_keys for leaf in _expand(info, k, where)]

    task = entry.get("task") or next((k for k in TASK_CANDIDATES if k in leaves), None)
    if task is not None:
        leaf = _expand(info, task, f"{where}.task")[0]
        codepoints = leaf.kind == "tensor" and leaf.dtype.startswith("int") and leaf.per_step and None not in leaf.shape
        if leaf.key != task or not (leaf.kind == "text" or codepoints):
            raise SourceError(f"{where}.task: key {task!r} is {leaf.kind} {leaf.dtype}: expected text "
                              "(or per-step int code points)")

    if "extra" in entry:
        extra = [(_numeric(_expand(info, k, where)[0], f"{where}.extra").key, v) for k, v in entry["extra"].items()]
    else:
        used = {*state, task}
        taken = {"observation.state"} if state else set()  # e.g. observation/state when state is other keys
        extra = [(k, name) for k, leaf in leaves.items()
                 if k.startswith(_OBS) and k not in used and _is_small_numeric(leaf)
                 and (name := "observation." + short_key(k).replace("/", ".")) not in taken]

    reward = leaves.get("steps/reward")
    mapping = Mapping(
        cameras=tuple(cameras), state=tuple(state), action=tuple(action), task=task,
        default_task=entry.get("default_task") or info.name, extra=tuple(extra),
        reward=reward.key if reward is not None and _is_small_numeric(reward) and reward.shape == () else None,
        fps=float(entry.get("fps", DEFAULT_FPS)), robot_type=entry.get("robot_type", ""),
    )
    _check_outputs(mapping, where)
    return mapping


def _check_outputs(m: Mapping, where: str) -> None:
    outputs = [v for _, v in m.cameras] + ["action"] + [v for _, v in m.extra]
    outputs += ["observation.state"] if m.state else []
    outputs += ["next.reward"] if m.reward else []
    dup = sorted({k for k in outputs if outputs.count(k) > 1})
    if dup:
        raise SourceError(f"{where}: several RLDS keys map to {dup}")
    if not m.action:
        raise SourceError(f"{where}: no action keys")
    if m.fps <= 0:
        raise SourceError(f"{where}.fps: must be > 0, got {m.fps}")
