"""Check a dataset end to end: every file's content hash, offset, frame count, video range, timestamp, dtype,
shape, value (finite, within :mod:`openlbm.bounds`) and stat.

``validate_dataset(root)`` never raises on bad data; it returns the list of :class:`Problem` found (empty = valid).
``require_valid(roots)`` is what ``lbm train`` runs on every dataset of its mixture before the first step: the same
checks except decoding (the reader checks every decoded frame where it reads it), raising one
:class:`~openlbm.data.layout.DatasetError` that names the first problem's file, episode and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlbm import bounds
from openlbm.data import checksums as C
from openlbm.data import layout as L
from openlbm.data.video import VideoReader, probe_video
from openlbm.types import FeatureSpec

Hashes = Literal["all", "data", "none"]
"""Which files' recorded sha256 :func:`validate_dataset` checks (data parquets are small; videos can be large)."""
REQUIRED_EPISODE_COLUMNS = ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                            "dataset_from_index", "dataset_to_index")


@dataclass(frozen=True)
class Problem:
    """One defect: where it is and what is wrong."""

    file: str
    """Path relative to the dataset root."""
    message: str
    """What was expected and what was found."""
    episode: int | None = None
    """Episode index, when the defect belongs to one."""
    field: str | None = None
    """Feature key or metadata field."""

    def __str__(self) -> str:
        loc = ", ".join(x for x in (self.file, f"episode {self.episode}" if self.episode is not None else "",
                                     f"field {self.field}" if self.field else "") if x)
        return f"{loc}: {self.message}"


def _header_facts(path: Path) -> dict[str, Any] | None:
    """What :func:`probe_video` returns, from the container header alone (frame count and rate; no packet is read):
    the frame times of a constant-rate stream. ``None`` when the header lacks the count or the rate."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        if not s.frames or not s.average_rate:
            return None
        rate = float(s.average_rate)
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        return {"codec": s.codec_context.name, "width": s.codec_context.width, "height": s.codec_context.height,
                "fps": rate, "pix_fmt": s.codec_context.pix_fmt, "times": list(start + np.arange(s.frames) / rate)}


class _Checker:
    def __init__(self, root: Path, decode: bool, scan_packets: bool = True, min_length: int = 1) -> None:
        self.root, self.decode, self.scan_packets, self.min_length = root, decode, scan_packets, min_length
        self.problems: list[Problem] = []

    def add(self, path: Path | str, message: str, episode: int | None = None, field: str | None = None) -> None:
        rel = str(Path(path).relative_to(self.root)) if Path(path).is_absolute() else str(path)
        self.problems.append(Problem(rel, message, episode, field))

    # -------------------------------------------------------------------------------------------------- meta
    def meta(self) -> tuple[dict[str, Any], dict[str, FeatureSpec], list[dict[str, Any]], int] | None:
        try:
            info = L.read_info(self.root)
            feats = {k: L.feature_from_json(k, v, self.root / L.INFO_PATH) for k, v in info["features"].items()}
            episodes = L.read_episodes(self.root)
        except (FileNotFoundError, L.DatasetError) as e:
            self.add(L.INFO_PATH, str(e))
            return None
        fps = float(info["fps"])
        if not fps > 0:  # NaN too
            self.add(L.INFO_PATH, f"fps must be > 0, got {fps}", field="fps")
        for k, f in feats.items():
            if f.dtype not in L.SUPPORTED_DTYPES:
                self.add(L.INFO_PATH, f"unsupported dtype {f.dtype!r}", field=k)
            vfps = info["features"][k].get("info", {}).get("video.fps") if f.dtype == "video" else None
            if vfps is not None and abs(float(vfps) - fps) > 1e-6:
                self.add(L.INFO_PATH, f"video.fps {vfps} != dataset fps {fps}", field=k)
            try:
                bounds.max_abs(k, info["features"][k])
            except ValueError as e:
                self.add(L.INFO_PATH, str(e), field=k)
        for k in L.DEFAULT_FEATURES:
            if k not in feats:
                self.add(L.INFO_PATH, "default feature missing from features", field=k)
        try:
            n_tasks = len(L.read_tasks(self.root))
        except (FileNotFoundError, L.DatasetError) as e:
            self.add(L.TASKS_PATH, str(e))
            n_tasks = 0
        for e, row in enumerate(episodes):
            for col in REQUIRED_EPISODE_COLUMNS:
                if col not in row or row[col] is None:
                    self.add(L.EPISODES_DIR, "column missing", e, col)
            if row.get("length") is not None and int(row["length"]) < 1:
                # training would fail far from here ("need at least one array to stack"); name the episode now
                self.add(L.EPISODES_DIR, f"episode has {row['length']} frames: an episode needs at least one "
                         "(remove it, or re-record it)", e, "length")
            elif row.get("length") is not None and int(row["length"]) < self.min_length:
                self.add(L.EPISODES_DIR, f"episode has {row['length']} frames, shorter than one observation window "
                         f"of {self.min_length} (remove it, or train with fewer observation steps)", e, "length")
        total = sum(int(r.get("length") or 0) for r in episodes)
        if info.get("total_episodes") != len(episodes):
            self.add(L.INFO_PATH, f"total_episodes {info.get('total_episodes')} != {len(episodes)} episode rows", field="total_episodes")
        if info.get("total_frames") != total:
            self.add(L.INFO_PATH, f"total_frames {info.get('total_frames')} != {total} (sum of episode lengths)", field="total_frames")
        start = 0
        for e, row in enumerate(episodes):
            if row.get("dataset_from_index") != start or row.get("dataset_to_index") != start + int(row.get("length") or 0):
                self.add(L.EPISODES_DIR, f"offsets [{row.get('dataset_from_index')}, {row.get('dataset_to_index')}) "
                         f"!= expected [{start}, {start + int(row.get('length') or 0)})", e, "dataset_from_index")
            start += int(row.get("length") or 0)
        return info, feats, episodes, n_tasks

    # -------------------------------------------------------------------------------------------------- data
    def data(self, info: dict[str, Any], feats: dict[str, FeatureSpec], episodes: list[dict[str, Any]], n_tasks: int) -> None:
        fps = float(info["fps"])
        by_file: dict[Path, list[int]] = {}
        for e, r in enumerate(episodes):
            p = self.root / str(info["data_path"]).format(chunk_index=r.get("data/chunk_index"), file_index=r.get("data/file_index"))
            by_file.setdefault(p, []).append(e)
        expected = {k: f for k, f in feats.items() if f.dtype != "video"}
        for path, eps in by_file.items():
            if not path.exists():
                self.add(path, "data parquet missing", eps[0])
                continue
            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as e:
                self.add(path, f"unreadable parquet (truncated or corrupt): {e}", eps[0])
                continue
            for col in table.column_names:
                if col not in feats:
                    self.add(path, "unknown feature key (column not declared in meta/info.json)", field=col)
            cols: dict[str, np.ndarray] = {}
            for k, spec in expected.items():
                if k not in table.column_names:
                    self.add(path, "declared feature missing from data", field=k)
                    continue
                if spec.dtype in L.NUMERIC_DTYPES:
                    typ = table.schema.field(k).type
                    base = typ.value_type if hasattr(typ, "value_type") else typ
                    if base != L.arrow_type(FeatureSpec(spec.dtype, (1,))):
                        self.add(path, f"dtype {base} but meta/info.json declares {spec.dtype}", field=k)
                        continue
                try:
                    cols[k] = L.column_to_numpy(table.column(k), spec)
                except (ValueError, pa.ArrowException) as e:
                    self.add(path, f"shape does not match {spec.shape}: {e}", field=k)
                    continue
            self._non_finite(path, cols)
            self._out_of_bounds(path, cols, info)
            if "index" in cols and "episode_index" in cols:
                self._episode_rows(path, eps, episodes, cols, fps, n_tasks)

    def _non_finite(self, path: Path, cols: dict[str, np.ndarray]) -> None:
        """NaN/inf in a float column, located by episode and frame (read after all columns: the episode column
        comes last in the file)."""
        for k, col in cols.items():
            if not np.issubdtype(col.dtype, np.floating):
                continue
            bad = ~np.isfinite(col.reshape(len(col), int(np.prod(col.shape[1:])))).all(1)  # [N, ...] -> [N, D] -> [N]
            if bad.any():
                row = int(np.argmax(bad))
                ep = int(cols["episode_index"].reshape(-1)[row]) if "episode_index" in cols else None
                at = f"frame {int(cols['frame_index'].reshape(-1)[row])}, " if "frame_index" in cols else ""
                self.add(path, f"{int(bad.sum())} rows with NaN/inf (first at {at}row {row})", ep, k)

    def _out_of_bounds(self, path: Path, cols: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Values beyond the feature's bound (:mod:`openlbm.bounds`, the one the policy server applies too),
        located by episode and frame."""
        for k, col in cols.items():
            try:
                bound = bounds.max_abs(k, info["features"].get(k))
            except ValueError:
                continue  # reported with meta/info.json
            bad = None if bound is None or not np.issubdtype(col.dtype, np.number) else bounds.first_out_of_bounds(col, bound)
            if bad is None:
                continue
            row, dim, value = bad
            ep = int(cols["episode_index"].reshape(-1)[row]) if "episode_index" in cols else None
            at = f"frame {int(cols['frame_index'].reshape(-1)[row])}" if "frame_index" in cols else f"row {row}"
            self.add(path, f"|value| {abs(value):.3g} at {at}, dim {dim} exceeds the bound {bound:.3g} (wrong units "
                     f"or corrupt data? a wider range is declared as \"{bounds.MAX_ABS_FIELD}\" in meta/info.json)", ep, k)

    def _episode_rows(self, path: Path, eps: list[int], episodes: list[dict[str, Any]], cols: dict[str, np.ndarray],
                      fps: float, n_tasks: int) -> None:
        index, ep_col = cols["index"].reshape(-1), cols["episode_index"].reshape(-1)
        for e in eps:
            r = episodes[e]
            rows = np.flatnonzero(ep_col == e)
            n = int(r.get("length") or 0)
            if len(rows) != n:
                self.add(path, f"{len(rows)} data rows but episode length {n}", e, "length")
                continue
            want = np.arange(int(r["dataset_from_index"]), int(r["dataset_to_index"]))
            if not np.array_equal(np.sort(index[rows]), want):
                self.add(path, "index column does not match dataset_from_index..dataset_to_index", e, "index")
            if "frame_index" in cols and not np.array_equal(cols["frame_index"].reshape(-1)[rows], np.arange(n)):
                self.add(path, "frame_index is not 0..length-1", e, "frame_index")
            if "timestamp" in cols:
                ts = cols["timestamp"].reshape(-1)[rows].astype(np.float64)
                err = np.abs(ts - np.arange(n) / fps)
                if err.max(initial=0) > 1e-3 + 1e-4 * n:
                    k = int(np.argmax(err))
                    self.add(path, f"timestamp {ts[k]:.5f} at frame {k} != frame/fps = {k / fps:.5f} (fps {fps})", e, "timestamp")
            if "task_index" in cols:
                ti = cols["task_index"].reshape(-1)[rows]
                if len(ti) and (ti.min() < 0 or ti.max() >= n_tasks):
                    self.add(path, f"task_index outside 0..{n_tasks - 1}", e, "task_index")

    # -------------------------------------------------------------------------------------------------- video
    def videos(self, info: dict[str, Any], feats: dict[str, FeatureSpec], episodes: list[dict[str, Any]]) -> None:
        fps = float(info["fps"])
        template = str(info.get("video_path") or L.VIDEO_PATH)
        probes: dict[Path, dict[str, Any] | str] = {}
        for key in (k for k, f in feats.items() if f.dtype == "video"):
            ranges: dict[Path, list[tuple[float, float, int]]] = {}  # file -> (from, to, episode) of this camera
            for e, r in enumerate(episodes):
                try:
                    path = self.root / template.format(video_key=key, chunk_index=r[f"videos/{key}/chunk_index"],
                                                       file_index=r[f"videos/{key}/file_index"])
                    t0, t1 = float(r[f"videos/{key}/from_timestamp"]), float(r[f"videos/{key}/to_timestamp"])
                except (KeyError, TypeError):
                    self.add(L.EPISODES_DIR, "video offsets missing", e, key)
                    continue
                if path not in probes:
                    probes[path] = self._probe(path, feats[key], fps, key, e)
                p = probes[path]
                if not isinstance(p, str):
                    ranges.setdefault(path, []).append((t0, t1, e))
                    self._episode_video(path, p, key, e, (t0, t1), int(r.get("length") or 0), fps)
            for path, rs in ranges.items():
                self._overlaps(path, key, rs, fps)

    def _episode_video(self, path: Path, p: dict[str, Any], key: str, e: int, span: tuple[float, float], n: int,
                       fps: float) -> None:
        """One episode's ``[from, to)`` range in its file: inside the file, ``n`` frames long at ``fps``, holding
        exactly ``n`` frames, and (with ``decode``) decodable at both ends."""
        t0, t1 = span
        tol = 0.25 / fps
        times = p["times"]
        start, end = (times[0], times[-1] + 1 / fps) if times else (0.0, 0.0)
        frames = sum(1 for t in times if t0 - tol <= t < t1 - tol)
        if frames != n:
            outside = t0 < start - tol or t1 > end + tol
            where = f"; the range lies outside the file, which holds [{start:.3f}, {end:.3f}) s" if outside else ""
            self.add(path, f"{frames} video frames in [{t0:.3f}, {t1:.3f}) s but {n} data rows{where}", e, key)
        elif abs((t1 - t0) * fps - n) > 0.01:
            self.add(L.EPISODES_DIR, f"to_timestamp - from_timestamp = {t1 - t0:.4f}s, expected {n / fps:.4f}s "
                     f"({n} frames at {fps:g} fps)", e, key)
        elif self.decode and n:
            try:
                reader = VideoReader(path, tol)
                reader.frames_at([t0, t0 + (n - 1) / fps])
                reader.close()
            except L.DatasetError as err:
                self.add(path, f"decode failed: {err}", e, key)

    def _overlaps(self, path: Path, key: str, ranges: list[tuple[float, float, int]], fps: float) -> None:
        """Episodes sharing a file must use disjoint ranges: an overlap means one of them trains on the other's
        frames (their frame counts can still match)."""
        tol = 0.25 / fps
        ordered = sorted(ranges)
        for (a0, a1, ea), (b0, b1, eb) in zip(ordered, ordered[1:], strict=False):
            if b0 < a1 - tol:
                self.add(path, f"[{b0:.3f}, {b1:.3f}) s overlaps episode {ea}'s [{a0:.3f}, {a1:.3f}) s in the same "
                         "file: the two episodes would share frames", eb, key)

    def _probe(self, path: Path, spec: FeatureSpec, fps: float, key: str, ep: int) -> dict[str, Any] | str:
        if not path.exists():
            self.add(path, "video file missing", ep, key)
            return "missing"
        try:
            p = (None if self.scan_packets else _header_facts(path)) or probe_video(path)
        except Exception as err:  # noqa: BLE001 - any FFmpeg failure means an unreadable file
            self.add(path, f"unreadable video (truncated or corrupt): {err}", ep, key)
            return "bad"
        if p["fps"] is not None and abs(float(p["fps"]) - fps) > 0.01:
            self.add(path, f"stream fps {p['fps']:.3f} != dataset fps {fps}", ep, key)
        if (p["height"], p["width"]) != tuple(spec.shape[:2]):
            self.add(path, f"frames are {p['height']}x{p['width']}, meta/info.json says {spec.shape[0]}x{spec.shape[1]}", ep, key)
        return p

    # -------------------------------------------------------------------------------------------------- hashes
    def hashes(self, info: dict[str, Any], episodes: list[dict[str, Any]], which: Hashes) -> None:
        """Each referenced file's sha256 against the one recorded when it was written (files without one: see
        :func:`unhashed_files`). Bytes changed in place can leave a parquet readable with plausible values."""
        if which == "none":
            return
        try:
            recorded = C.read_checksums(self.root) or {}
        except L.DatasetError as e:
            self.add(C.CHECKSUMS_PATH, str(e))
            return
        for rel, eps in C.content_files(info, episodes, videos=which == "all").items():
            path = self.root / rel
            if rel in recorded and path.is_file() and C.file_sha256(path) != recorded[rel]:
                self.add(path, f"content changed since it was written (sha256 differs from {C.CHECKSUMS_PATH}): "
                         "corrupted or edited in place; restore the file or re-create the dataset", eps[0])

    # -------------------------------------------------------------------------------------------------- stats
    def stats(self, feats: dict[str, FeatureSpec], episodes: list[dict[str, Any]]) -> None:
        path = self.root / L.STATS_PATH
        if not path.exists():
            self.add(path, "stats.json missing (run `lbm data stats`)")
            return
        try:
            stats = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            self.add(path, f"invalid JSON: {e}")
            return
        if not episodes:
            return
        for key, spec in feats.items():
            if key in L.DEFAULT_FEATURES or spec.dtype not in L.SUPPORTED_DTYPES:
                continue
            st = stats.get(key)
            if st is None:
                self.add(path, "no stats for feature", field=key)
                continue
            want = (3, 1, 1) if spec.dtype == "video" else (int(np.prod(spec.shape)),)
            for name in ("mean", "std", "min", "max"):
                if name not in st:
                    self.add(path, f"stat {name!r} missing", field=key)
                    continue
                arr = np.asarray(st[name], dtype=np.float64)
                if arr.shape != want:
                    self.add(path, f"{name} has shape {arr.shape}, expected {want}", field=key)
                elif not np.isfinite(arr).all():
                    self.add(path, f"{name} contains NaN/inf", field=key)


def validate_dataset(root: Path | str, decode: bool = True, allow_empty: bool = False,
                     scan_packets: bool = True, hashes: Hashes = "all", min_length: int = 1) -> list[Problem]:
    """All problems found in the dataset at ``root`` (empty list = valid). ``decode`` also decodes episode edges;
    a dataset without episodes is a problem unless ``allow_empty``. ``scan_packets=False`` counts each video's
    frames from its container header (frame count and rate) instead of reading every packet's timestamp.
    ``hashes`` says whose recorded sha256 is checked: data and video files, data files only, or none.
    ``min_length``: the frames one training window needs; a shorter episode is a problem (see :func:`require_valid`)."""
    root = Path(root).resolve()
    c = _Checker(root, decode, scan_packets, min_length)
    if not root.is_dir():
        return [Problem(str(root), "dataset folder does not exist")]
    from openlbm.data.writer import recover

    recover(root)  # an interrupted finalize is rolled forward/back first, exactly as every reader does
    meta = c.meta()
    if meta is None:
        return c.problems
    info, feats, episodes, n_tasks = meta
    if not float(info["fps"]) > 0:
        return c.problems  # every timestamp and video range is measured in frames at fps: nothing more to check
    if not episodes and not allow_empty:
        c.add(L.INFO_PATH, "dataset has 0 episodes", field="total_episodes")
    c.data(info, feats, episodes, n_tasks)
    c.videos(info, feats, episodes)
    c.stats(feats, episodes)
    c.hashes(info, episodes, hashes)  # last: a file with a structural defect is named for that defect first
    return c.problems


def unhashed_files(root: Path | str) -> list[str]:
    """Referenced data and video files without a recorded sha256 (a dataset written by another tool, or before
    openlbm recorded them): their content cannot be checked until ``lbm data validate --write-hashes``."""
    root = Path(root)
    recorded = C.read_checksums(root) or {}
    return [rel for rel in C.content_files(L.read_info(root), L.read_episodes(root)) if rel not in recorded]


def require_valid(roots: list[Path] | tuple[Path, ...], min_length: int = 1) -> None:
    """Raise :class:`~openlbm.data.layout.DatasetError` naming the first problem of the first invalid dataset.

    ``min_length``: training passes the policy's ``n_obs_steps``, the frames of one observation window. An episode
    shorter than that has no sample whose history is all real frames; it is a recording fault, refused by name. The
    action chunk is not counted: its steps past an episode's end are padding the loss skips, as in every chunked
    policy, so any episode at least one window long gives valid targets.

    Runs the checks of :func:`validate_dataset` that cost no video decoding or packet reading: metadata, every
    parquet column's dtype, shape, NaN/inf, value bounds, index and timestamps, the data files' recorded sha256,
    stats, and each video's fps, size, ranges and frames per episode from its container header. What needs the
    video's packets (a frame missing or undecodable mid-file) is checked where the frames are read: the reader
    names file, episode and field. Video hashes are left to ``lbm data validate`` (reading every video before each
    run would cost more than the run's first steps on a large dataset).
    """
    for root in roots:
        problems = validate_dataset(root, decode=False, scan_packets=False, hashes="data", min_length=min_length)
        if problems:
            more = f" (and {len(problems) - 1} more; `lbm data validate {root}` lists them all)" if len(problems) > 1 else ""
            raise L.DatasetError(f"dataset {root} is invalid: {problems[0]}{more}")
