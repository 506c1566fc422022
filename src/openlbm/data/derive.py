"""Derived copies of a v3 dataset: the same episodes with some features removed or added, videos never re-encoded.

``derive(src, dst, why, drop=..., add=..., files=...)`` is the one mechanism; ``lbm data strip-actions`` and
``lbm data label-latent`` (which adds ``latent_action`` columns and its provenance file) both use it.

``strip_actions(src, dst)`` (``lbm data strip-actions``) makes the action-less copy of a demo dataset ("demo videos
with their actions removed"): ``action`` (and, with ``keep_state=False``, ``observation.state``) leaves
``meta/info.json``, the data parquet files, the ``stats/<key>/...`` episode columns and ``meta/stats.json``; every
other value is carried over unchanged (statistics of the kept features stay exact: they are the same data).

Videos are hard-linked into ``dst`` (copied when ``dst`` is on another filesystem): openlbm never rewrites a file in
place, so the two datasets can share them. The copy is assembled in a hidden sibling folder ``.<dst>.partial`` (locked
while in use) and renamed to ``dst`` when complete, so ``dst`` either does not exist or holds the whole dataset; a
killed run leaves only that hidden folder, which the next run clears. ``meta/derived.json`` records where it came from.

An added feature is one value per frame (an array indexed by the global frame ``index``): it is appended to the data
parquet files (rows matched by ``index``), gets its per-episode stats in ``meta/episodes`` and exact dataset stats
in ``meta/stats.json``, and is declared in ``meta/info.json``, which is written last.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlbm.data import checksums as C
from openlbm.data import layout as L
from openlbm.locking import LOCK_FILE, lock_dir
from openlbm.types import ACTION_KEY, STATE_KEY, FeatureSpec

Added = dict[str, tuple[FeatureSpec, np.ndarray]]
"""New per-frame features: key -> (spec, values ``[num_frames, *shape]`` by global frame index)."""

DERIVED_PATH = "meta/derived.json"
# not part of the data (a new dataset is no conversion); the copy's checksums are written for its own files
SKIPPED = {LOCK_FILE, "meta/conversion.json", DERIVED_PATH, C.CHECKSUMS_PATH}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not permitted
        shutil.copy2(src, dst)


def _rewrite_parquet(src: Path, dst: Path, drop_columns: list[str], hf_meta: str | None, add: Added | None = None) -> None:
    table = pq.read_table(src)
    table = table.drop_columns([c for c in drop_columns if c in table.column_names])
    if add:
        rows = table.column("index").to_numpy().reshape(-1)
        for key, (spec, values) in add.items():
            typ = L.arrow_type(spec)
            if pa.types.is_fixed_size_list(typ):
                flat = pa.array(values[rows].reshape(-1), typ.value_type)  # [n, D] -> [n*D]
                column = pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
            else:  # a one-wide feature is a plain column, as the writer stores it
                column = pa.array(values[rows].reshape(-1), typ)
            table = table.append_column(pa.field(key, typ), column)
    if hf_meta is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"huggingface"] = hf_meta.encode()
        table = table.replace_schema_metadata(meta)
    L.write_parquet_atomic(dst, table)


def _episode_rows(src: Path, dst: Path, drop_columns: list[str], meta: Any, add: Added) -> None:
    """A ``meta/episodes`` file without the dropped features' stats and with the added ones' (per episode)."""
    from openlbm.data.stats import episode_stats

    table = pq.read_table(src)
    table = table.drop_columns([c for c in drop_columns if c in table.column_names])
    if not add:
        return L.write_parquet_atomic(dst, table)
    rows = []
    for row in table.to_pylist():
        e = int(row["episode_index"])
        sl = slice(int(meta.ep_from[e]), int(meta.ep_to[e]))
        for key, st in episode_stats({k: v[sl] for k, (_, v) in add.items()}).items():
            row.update({f"stats/{key}/{name}": v for name, v in st.items()})
        rows.append(row)
    L.write_parquet_atomic(dst, pa.Table.from_pylist(rows))


def _write_checksums(src: Path, staging: Path, info: dict[str, Any], episodes: list[dict[str, Any]]) -> None:
    """Hashes of the copy's data and video files. A linked video is the same bytes: it keeps its source's recorded
    hash instead of being read again (a source video that no longer matches it fails validation in the copy too);
    rewritten parquets, and videos whose source has no hash, are hashed."""
    recorded = C.read_checksums(src) or {}
    data = C.content_files(info, episodes, videos=False)
    entries = {rel: recorded.get(rel) if rel not in data else None for rel in C.content_files(info, episodes)}
    entries.update(C.hash_files(staging, [rel for rel, h in entries.items() if h is None]))
    C.write(staging / C.CHECKSUMS_PATH, entries)


def check_destination(src: Path, dst: Path) -> None:
    """A derived copy goes to a new or empty folder outside its source (callers check before expensive work)."""
    if src.resolve() == dst.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise L.DatasetError(f"{dst}: the destination must lie outside the source dataset {src}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose an empty or new destination")


def derive(src: Path | str, dst: Path | str, why: str, drop: list[str] = (), add: Added | None = None,  # type: ignore[assignment]
           files: dict[str, Any] | None = None) -> Path:
    """Copy the v3 dataset ``src`` to ``dst`` without the features ``drop``, with the features ``add`` and the JSON
    ``files`` (path in the dataset -> content) (see the module docstring). ``why`` names the writer (lock holder,
    ``meta/derived.json``)."""
    from openlbm.data.dataset import DatasetMeta
    from openlbm.data.stats import array_source, exact_stats
    from openlbm.data.validate import require_valid

    src, dst, add, files = Path(src), Path(dst), dict(add or {}), dict(files or {})
    meta = DatasetMeta(src)  # clear errors for a missing folder / not a dataset; recovers an interrupted finalize
    require_valid([src])
    check_destination(src, dst)
    taken = sorted(k for k in add if k in meta.features)
    if taken:
        raise L.DatasetError(f"{src} already has feature(s) {taken}")
    bad = {k: v.shape for k, (f, v) in add.items() if tuple(v.shape) != (meta.num_frames, *f.shape)}
    if bad:
        raise ValueError(f"added features must have one value per frame ({meta.num_frames}): got {bad}")
    drop = [k for k in drop if k in meta.features]
    staging = dst.parent / f".{dst.name}.partial"
    lock = lock_dir(staging, why)
    try:
        for p in list(staging.iterdir()):  # leftovers of a killed run (we hold the lock: no one else is using it)
            if p.name != LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        info = dict(meta.info)
        info["features"] = {k: v for k, v in meta.info["features"].items() if k not in drop}
        info["features"].update({k: L.feature_to_json(f, meta.fps) for k, (f, _) in add.items()})
        kept = {k: L.feature_from_json(k, v, src / L.INFO_PATH) for k, v in info["features"].items()}
        hf_meta = L.hf_features_meta({k: f for k, f in kept.items() if f.dtype != "video"})
        data_files = {p.resolve() for p in L.iter_data_files(src, meta.episodes, meta.data_path)}
        stat_cols = [f"stats/{k}/{s}" for k in drop for s in ("min", "max", "mean", "std", "count", "q01", "q10", "q50",
                                                                 "q90", "q99")]
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if not path.is_file() or rel in SKIPPED or rel in files or any(p.startswith(".") for p in Path(rel).parts):
                continue
            out = staging / rel
            if path.resolve() in data_files:
                _rewrite_parquet(path, out, drop, hf_meta, add)
            elif rel.startswith(L.EPISODES_DIR + "/") and path.suffix == ".parquet":
                _episode_rows(path, out, stat_cols, meta, add)
            elif rel == L.INFO_PATH:
                continue  # written last
            elif rel == L.STATS_PATH:
                stats = {k: v for k, v in json.loads(path.read_text()).items() if k not in drop}
                stats.update({k: exact_stats([array_source(v)]) for k, (_, v) in add.items()})
                L.write_json_atomic(out, stats)
            else:
                _link_or_copy(path, out)  # videos, tasks, image histograms, provenance files, README...
        for rel, content in files.items():
            L.write_json_atomic(staging / rel, content)
        _write_checksums(src, staging, info, meta.episodes)
        L.write_json_atomic(staging / DERIVED_PATH, {
            "from": str(src.resolve()), "dropped_features": drop, "added_features": sorted(add), "made_by": why,
            "date": datetime.now(UTC).isoformat(timespec="seconds")})
        L.write_json_atomic(staging / L.INFO_PATH, info)
        L.fsync_dir(staging)
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.replace(staging, dst)  # commit: dst appears complete or not at all
        L.fsync_dir(dst.parent)
    finally:
        lock.release()
    return dst


def strip_actions(src: Path | str, dst: Path | str, keep_state: bool = True) -> Path:
    """The action-less copy of ``src`` at ``dst`` (without ``observation.state`` too unless ``keep_state``)."""
    from openlbm.data.dataset import DatasetMeta

    meta = DatasetMeta(src)
    drop = [ACTION_KEY] + ([] if keep_state else [STATE_KEY])
    if not any(k in meta.features for k in drop):
        raise L.DatasetError(f"{meta.root}: has no {' or '.join(drop)}; nothing to strip")
    return derive(src, dst, "lbm data strip-actions", drop=drop)
