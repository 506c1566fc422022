"""RLDS / TFDS datasets (Open X-Embodiment, DROID, ...) as a :class:`~openlbm.data.convert.source.Source`,
read without TensorFlow.

One TFDS record is one episode: a ``tf.train.Example`` whose ``steps/...`` keys hold every step's values
concatenated (:mod:`openlbm.data.convert.tfds_meta`). Episodes are numbered across splits in the order
``dataset_info.json`` lists them, then shard by shard, record by record. Images (JPEG/PNG bytes) are decoded with
Pillow; which keys become which features is :mod:`openlbm.data.convert.rlds_map`. Every episode is checked: each
mapped key present with ``T`` steps of its declared shape, finite numbers, decodable images of the declared size,
``is_first`` only on the first step and ``is_last`` only on the last. Errors name the shard file, the record
index within it and the key.
"""

from __future__ import annotations

import bisect
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from openlbm.data.convert import tfrecord
from openlbm.data.convert.rlds_map import Mapping, resolve, short_key
from openlbm.data.convert.source import SourceEpisode, SourceError
from openlbm.data.convert.tfds_meta import Leaf, read_info
from openlbm.types import FeatureSpec


class RLDSSource:
    """A prepared RLDS/TFDS dataset folder opened for conversion (see the module docstring)."""

    def __init__(self, root: Path, keymap: Path | None = None, *, splits: tuple[str, ...] | None = None):
        """``root``: the TFDS version folder (``<name>/<version>``) or a folder with exactly one below it;
        ``keymap``: a JSON file merged over the shipped ``oxe_keymap.json``; ``splits``: the splits to read
        (default: all, in ``dataset_info.json`` order)."""
        self.root = Path(root)
        self.info = read_info(self.root)
        known = [s.name for s in self.info.splits]
        if splits is not None and (unknown := sorted(set(splits) - set(known))):
            raise SourceError(f"{self.info.root}: unknown split(s) {unknown} (dataset has {known})")
        self.splits = tuple(s for s in self.info.splits if splits is None or s.name in splits)
        self.mapping: Mapping = resolve(self.info, keymap)
        # One entry per shard file: (split, path, episodes in it); _starts[i] = index of its first episode.
        self._shards = [(s.name, p, n) for s in self.splits for p, n in zip(s.shards, s.lengths, strict=True)]
        self._starts = list(np.cumsum([0] + [n for _, _, n in self._shards]).tolist())
        self._offsets: dict[Path, list[int]] = {}
        self._image_shapes: dict[str, tuple[int, int, int]] = {}

    @property
    def fps(self) -> float:
        return self.mapping.fps

    @property
    def robot_type(self) -> str:
        return self.mapping.robot_type

    def __len__(self) -> int:
        return self._starts[-1]

    def features(self) -> dict[str, FeatureSpec]:
        m, leaves = self.mapping, self.info.leaves
        out: dict[str, FeatureSpec] = {}
        for key, name in m.cameras:
            out[name] = FeatureSpec("video", self._image_shape(key))
        if m.state:
            out["observation.state"] = FeatureSpec("float32", (self._width(m.state),), self._names(m.state))
        out["action"] = FeatureSpec("float32", (self._width(m.action),), self._names(m.action))
        for key, name in m.extra:
            out[name] = FeatureSpec("float32", (max(leaves[key].size, 1),))
        if m.reward:
            out["next.reward"] = FeatureSpec("float32", (1,))
        return out

    def episode(self, index: int) -> SourceEpisode:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range [0, {len(self)})")
        s = bisect.bisect_right(self._starts, index) - 1
        _, path, n = self._shards[s]
        record = index - self._starts[s]
        if path not in self._offsets:
            self._check_shard(path)
            offsets = tfrecord.record_offsets(path)
            if len(offsets) != n:
                raise SourceError(f"{path.name}: holds {len(offsets)} records, dataset_info.json says {n}")
            self._offsets[path] = offsets
        data = tfrecord.read_record(path, self._offsets[path][record], record)
        return self._decode(data, index, f"{path.name} record {record}")

    def __iter__(self) -> Iterator[SourceEpisode]:
        for s, (_, path, n) in enumerate(self._shards):
            self._check_shard(path)
            count = 0
            for record, data in tfrecord.iter_records(path):
                if record >= n:
                    raise SourceError(f"{path.name}: holds more than the {n} records dataset_info.json lists")
                yield self._decode(data, self._starts[s] + record, f"{path.name} record {record}")
                count += 1
            if count != n:
                raise SourceError(f"{path.name}: holds {count} records, dataset_info.json says {n}")

    # -- decoding ------------------------------------------------------------------------------------------

    def _check_shard(self, path: Path) -> None:
        if not path.is_file():
            raise SourceError(f"{path}: shard listed in dataset_info.json is missing")

    def _decode(self, data: bytes, index: int, origin: str) -> SourceEpisode:
        ex = tfrecord.parse_example(data, origin)
        m = self.mapping
        steps = self._length(ex, origin)
        self._check_boundaries(ex, steps, origin)
        frames: dict[str, np.ndarray] = {}
        for key, name in m.cameras:
            frames[name] = self._images(ex, key, steps, origin)
        if m.state:
            frames["observation.state"] = self._concat(ex, m.state, steps, origin)
        frames["action"] = self._concat(ex, m.action, steps, origin)
        for key, name in m.extra:
            frames[name] = self._concat(ex, (key,), steps, origin)
        if m.reward:
            frames["next.reward"] = self._concat(ex, (m.reward,), steps, origin)
        return SourceEpisode(index=index, task=self._task(ex, steps, origin), frames=frames, origin=origin)

    def _get(self, ex: dict, key: str, origin: str) -> np.ndarray | list[bytes]:
        if key not in ex:
            raise SourceError(f"{origin}: missing key {key!r} (declared in features.json)")
        return ex[key]

    def _length(self, ex: dict, origin: str) -> int:
        """Number of steps, from ``is_first`` (every RLDS step has it) or else the first action key."""
        key = "steps/is_first" if "steps/is_first" in self.info.leaves else self.mapping.action[0]
        value = self._get(ex, key, origin)
        steps = len(value) // max(self.info.leaves[key].size, 1)
        if steps == 0:
            raise SourceError(f"{origin}: episode has no steps (key {key!r} is empty)")
        return steps

    def _check_boundaries(self, ex: dict, steps: int, origin: str) -> None:
        for key, at in (("steps/is_first", 0), ("steps/is_last", steps - 1)):
            if key not in self.info.leaves:
                continue
            flags = self._values(ex, key, steps, origin).reshape(steps) != 0  # one flag per step
            if not flags[at] or flags.sum() != 1:
                where = np.flatnonzero(flags).tolist()
                raise SourceError(f"{origin}: key {key!r} is set at steps {where}; an episode has it only at step {at}")

    def _values(self, ex: dict, key: str, steps: int, origin: str) -> np.ndarray:
        """A per-step numeric leaf as ``[T, size]`` in its own dtype (bytes/zlib tensor encodings undone)."""
        leaf: Leaf = self.info.leaves[key]
        value = self._get(ex, key, origin)
        size = max(leaf.size, 1)
        if leaf.encoding in ("bytes", "zlib"):
            if not isinstance(value, list) or len(value) != steps:
                raise SourceError(f"{origin}: key {key!r} must hold {steps} encoded tensors, got {len(value)}")
            try:
                raw = [zlib.decompress(b) if leaf.encoding == "zlib" else b for b in value]
                arr = np.stack([np.frombuffer(b, dtype=np.dtype(leaf.dtype)) for b in raw])
            except (zlib.error, ValueError, TypeError) as e:
                raise SourceError(f"{origin}: key {key!r}: undecodable {leaf.encoding} tensor ({e})") from None
        elif isinstance(value, list):
            raise SourceError(f"{origin}: key {key!r} holds byte strings, features.json says {leaf.dtype} numbers")
        else:
            arr = value
        if arr.size != steps * size:
            raise SourceError(
                f"{origin}: key {key!r} has {arr.size} values, expected {steps} steps x shape {leaf.shape} "
                f"= {steps * size} (wrong shape or type)"
            )
        return arr.reshape(steps, size)  # [T, prod(shape)]

    def _concat(self, ex: dict, keys: tuple[str, ...], steps: int, origin: str) -> np.ndarray:
        parts = [self._values(ex, k, steps, origin).astype(np.float32) for k in keys]
        out = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        bad = ~np.isfinite(out)
        if bad.any():
            t, d = np.argwhere(bad)[0]
            raise SourceError(f"{origin}: keys {list(keys)}: non-finite value {out[t, d]} at step {t}, dim {d}")
        return np.ascontiguousarray(out)

    def _images(self, ex: dict, key: str, steps: int, origin: str) -> np.ndarray:
        value = self._get(ex, key, origin)
        if not isinstance(value, list) or len(value) != steps:
            n = len(value) if isinstance(value, list) else f"a numeric list of {len(value)}"
            raise SourceError(f"{origin}: key {key!r} must hold {steps} encoded images, got {n}")
        expected = self._image_shape(key)
        out = np.empty((steps, *expected), dtype=np.uint8)
        for t, blob in enumerate(value):
            img = _decode_image(blob, f"{origin}: key {key!r} step {t}")
            if img.shape != expected:
                raise SourceError(f"{origin}: key {key!r} step {t}: image is {img.shape}, expected {expected}")
            out[t] = img
        return out

    def _task(self, ex: dict, steps: int, origin: str) -> str:
        key = self.mapping.task
        if key is None or key not in ex:
            if key is not None and self.info.leaves[key].per_step:
                raise SourceError(f"{origin}: missing key {key!r} (declared in features.json)")
            return self.mapping.default_task  # an optional episode-level instruction may be absent
        value = ex[key]
        if isinstance(value, list):
            try:
                texts = [b.decode("utf-8") for b in value]
            except UnicodeDecodeError as e:
                raise SourceError(f"{origin}: key {key!r}: instruction is not UTF-8 ({e})") from None
        else:  # int code points per step, zero padded (Language-Table)
            texts = [_codepoints(row) for row in self._values(ex, key, steps, origin)]
        return next((t.strip() for t in texts if t.strip()), self.mapping.default_task)

    # -- metadata helpers ----------------------------------------------------------------------------------

    def _image_shape(self, key: str) -> tuple[int, int, int]:
        """(H, W, 3) from features.json; unknown dims are read from the first frame of the first episode."""
        if key not in self._image_shapes:
            shape = self.info.leaves[key].shape
            if len(shape) == 3 and None not in shape and shape[2] == 3:
                self._image_shapes[key] = (int(shape[0]), int(shape[1]), 3)
            elif len(shape) == 3 and shape[2] in (3, None) and len(self):
                path = next(p for _, p, n in self._shards if n > 0)
                self._check_shard(path)
                _, data = next(tfrecord.iter_records(path))
                blob = self._get(tfrecord.parse_example(data, f"{path.name} record 0"), key, f"{path.name} record 0")
                img = _decode_image(blob[0], f"{path.name} record 0: key {key!r} step 0")
                self._image_shapes[key] = (img.shape[0], img.shape[1], 3)
            else:
                raise SourceError(f"{self.info.root / 'features.json'}: image {key!r} has shape {shape}: need HxWx3")
        return self._image_shapes[key]

    def _width(self, keys: tuple[str, ...]) -> int:
        return sum(max(self.info.leaves[k].size, 1) for k in keys)

    def _names(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """Per-dimension names recording where each value came from, e.g. ``("state_0", ..., "gripper_closed")``."""
        names: list[str] = []
        for k in keys:
            short = short_key(k).replace("/", ".")
            size = self.info.leaves[k].size
            names += [short] if size <= 1 else [f"{short}_{i}" for i in range(size)]
        return tuple(names)


def _codepoints(row: np.ndarray) -> str:
    """Text from one zero-padded row of unicode code points."""
    end = np.flatnonzero(row == 0)
    return "".join(chr(int(c)) for c in row[: end[0] if len(end) else len(row)])


def _decode_image(blob: bytes, where: str) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> uint8 ``[H, W, 3]`` (grey or alpha images converted to RGB, as TF's channels=3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SourceError(f"{where}: undecodable image bytes ({type(e).__name__}: {e})") from None
