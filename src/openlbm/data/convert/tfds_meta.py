"""The metadata of a prepared TFDS dataset folder: ``dataset_info.json`` (name, splits, shard files and their
example counts) and ``features.json`` (the feature tree), read as plain JSON.

A prepared TFDS dataset (``<data_dir>/<name>/<version>/``, optionally ``<name>/<config>/<version>/``) holds::

    dataset_info.json      name, version, fileFormat, splits[{name, shardLengths, filepathTemplate}]
    features.json          {"pythonClassName": "...FeaturesDict", "featuresDict": {"features": {...}}}
    <name>-<split>.tfrecord-00000-of-00004 ...

``features.json`` nests ``FeaturesDict`` (``featuresDict.features``), ``Dataset``/``Sequence``
(``sequence.feature``), and leaves: ``Tensor``/``Scalar`` (``tensor: {shape.dimensions, dtype, encoding}``),
``Image`` (``image: {shape, dtype, encodingFormat}``), ``Text`` (``text``), ``ClassLabel``. TFDS serializes an
episode as one ``tf.train.Example`` whose keys are the leaf paths joined with ``/`` (``steps/observation/image``);
the values of a leaf inside the ``steps`` sequence are concatenated over the steps (an image leaf holds one
encoded image per step, a ``Tensor(shape=(7,))`` holds ``7 * T`` numbers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openlbm.data.convert.source import SourceError
from openlbm.jsonio import read_json

NUMERIC = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "bool"}


@dataclass(frozen=True)
class Leaf:
    """One leaf feature of the TFDS tree, at its flattened Example key."""

    key: str
    """Flattened path, e.g. ``"steps/observation/image"`` (the key in the serialized Example)."""
    kind: str
    """``"tensor"``, ``"image"``, ``"text"`` or ``"unsupported"`` (anything else; only an error if mapped)."""
    dtype: str
    """``"float32"``, ``"uint8"``, ``"bool"``, ``"string"``...; for ``"unsupported"`` the TFDS class name."""
    shape: tuple[int | None, ...]
    """Per-step (or per-episode) shape; ``None`` for a dimension TFDS leaves unknown."""
    per_step: bool
    """True inside the ``steps`` sequence (one value per step), False for episode-level features."""
    encoding: str = "none"
    """Tensors: ``"none"`` (numbers in a float/int64 list), ``"bytes"`` or ``"zlib"``; images: ``"jpeg"``/``"png"``."""

    @property
    def size(self) -> int:
        """Numbers per step (1 for scalars); only meaningful for fully known shapes."""
        return math.prod(d or 0 for d in self.shape) if self.shape else 1


@dataclass(frozen=True)
class Split:
    """One split: its shard files (in order) and the number of episodes in each."""

    name: str
    shards: tuple[Path, ...]
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class TFDSInfo:
    """A prepared TFDS dataset folder."""

    root: Path
    """The version folder holding ``dataset_info.json``."""
    name: str
    version: str
    splits: tuple[Split, ...]
    leaves: dict[str, Leaf]
    """Flattened key -> leaf, in ``features.json`` order."""


def find_version_dir(root: Path) -> Path:
    """``root`` itself if it holds ``dataset_info.json``, else the single such folder up to two levels below."""
    root = Path(root)
    if (root / "dataset_info.json").is_file():
        return root
    found = sorted({p.parent for pat in ("*/dataset_info.json", "*/*/dataset_info.json") for p in root.glob(pat)})
    if len(found) == 1:
        return found[0]
    if not found:
        raise SourceError(f"{root}: no dataset_info.json here or up to two levels below (not a TFDS dataset folder)")
    names = ", ".join(str(p.relative_to(root)) for p in found)
    raise SourceError(f"{root}: several TFDS datasets/versions ({names}); pass one version folder")


def _load_json(path: Path) -> Any:
    try:
        return read_json(path)
    except ValueError as e:  # names the file; add what a TFDS folder holds
        raise SourceError(f"{e} (a prepared TFDS dataset has dataset_info.json and features.json)") from None


def _shard_names(template: str, name: str, split: str, file_format: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        s = template.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", file_format)
        out.append(s.replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}").replace("{SHARD_INDEX}", f"{i:05d}"))
    return out


def _dims(spec: dict[str, Any], where: str) -> tuple[int | None, ...]:
    try:
        dims = [int(d) for d in spec.get("shape", {}).get("dimensions", [])]
    except (TypeError, ValueError):
        raise SourceError(f"{where}: bad shape {spec.get('shape')!r}") from None
    return tuple(None if d < 0 else d for d in dims)


def _walk(node: dict[str, Any], key: str, per_step: bool, out: dict[str, Leaf], where: str) -> None:
    """Add the leaves under ``node`` (at flattened ``key``) to ``out``."""
    if "featuresDict" in node:
        for name, child in node["featuresDict"].get("features", {}).items():
            _walk(child, f"{key}/{name}" if key else name, per_step, out, where)
    elif "sequence" in node:
        if per_step:  # a sequence inside steps is serialized as ragged values + row lengths: not read
            out[key] = Leaf(key, "unsupported", "nested Sequence", (), per_step)
        else:
            _walk(node["sequence"].get("feature", {}), key, True, out, where)
    elif "image" in node:
        spec = node["image"]
        out[key] = Leaf(key, "image", spec.get("dtype", "uint8"), _dims(spec, f"{where}: {key}"), per_step,
                        spec.get("encodingFormat", "png"))
    elif "tensor" in node:
        spec = node["tensor"]
        out[key] = Leaf(key, "tensor", spec.get("dtype", "float32"), _dims(spec, f"{where}: {key}"), per_step,
                        spec.get("encoding", "none"))
    elif "text" in node:
        out[key] = Leaf(key, "text", "string", (), per_step)
    elif "classLabel" in node:
        out[key] = Leaf(key, "tensor", "int64", (), per_step)
    else:
        cls = node.get("pythonClassName", "unknown").rsplit(".", 1)[-1]
        out[key] = Leaf(key, "unsupported", cls, (), per_step)


def read_info(root: Path) -> TFDSInfo:
    """Parse ``dataset_info.json`` and ``features.json`` of the TFDS dataset at (or just below) ``root``."""
    vdir = find_version_dir(root)
    info = _load_json(vdir / "dataset_info.json")
    feats = _load_json(vdir / "features.json")
    where = str(vdir / "features.json")
    if "featuresDict" not in feats:
        raise SourceError(f"{where}: expected the TFDS >= 4 layout with a top-level 'featuresDict' (got keys "
                          f"{sorted(feats)[:5]}); re-save the dataset with a recent tensorflow-datasets")
    name = info.get("name") or vdir.parent.name
    file_format = info.get("fileFormat", "tfrecord") or "tfrecord"
    if file_format != "tfrecord":
        raise SourceError(f"{vdir / 'dataset_info.json'}: fileFormat {file_format!r} is not supported (only tfrecord)")
    splits = []
    for s in info.get("splits", []):
        lengths = tuple(int(n) for n in s.get("shardLengths", []))
        template = s.get("filepathTemplate") or "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
        names = _shard_names(template, name, s["name"], file_format, len(lengths))
        splits.append(Split(s["name"], tuple(vdir / n for n in names), lengths))
    if not splits:
        raise SourceError(f"{vdir / 'dataset_info.json'}: no splits listed")
    leaves: dict[str, Leaf] = {}
    _walk(feats, "", False, leaves, where)
    if not any(leaf.per_step for leaf in leaves.values()):
        raise SourceError(f"{where}: no 'steps' sequence feature: not an RLDS dataset")
    version = info.get("version") or (vdir.name if re.fullmatch(r"\d+\.\d+\.\d+", vdir.name) else "")
    return TFDSInfo(vdir, name, str(version), tuple(splits), leaves)
