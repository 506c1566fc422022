"""Derived copies of a v3 dataset: the same episodes with some features removed, videos never re-encoded.

``strip_actions(src, dst)`` (``lbm data strip-actions``) makes the action-less copy of a demo dataset ("demo videos
with their actions removed"): ``action`` (and, with ``keep_state=False``, ``observation.state``) leaves
``meta/info.json``, the data parquet files, the ``stats/<key>/...`` episode columns and ``meta/stats.json``; every
other value is carried over unchanged (statistics of the kept features stay exact: they are the same data).

Videos are hard-linked into ``dst`` (copied when ``dst`` is on another filesystem): openlbm never rewrites a file in
place, so the two datasets can share them. The copy is assembled in a hidden sibling folder ``.<dst>.partial`` (locked
while in use) and renamed to ``dst`` when complete, so ``dst`` either does not exist or holds the whole dataset; a
killed run leaves only that hidden folder, which the next run clears. ``meta/derived.json`` records where it came from.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from openlbm.data import layout as L
from openlbm.locking import LOCK_FILE, lock_dir
from openlbm.types import ACTION_KEY, STATE_KEY

DERIVED_PATH = "meta/derived.json"
SKIPPED = {LOCK_FILE, "meta/conversion.json", DERIVED_PATH}  # not part of the data (a new dataset is no conversion)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not permitted
        shutil.copy2(src, dst)


def _rewrite_parquet(src: Path, dst: Path, drop_columns: list[str], hf_meta: str | None) -> None:
    table = pq.read_table(src)
    table = table.drop_columns([c for c in drop_columns if c in table.column_names])
    if hf_meta is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"huggingface"] = hf_meta.encode()
        table = table.replace_schema_metadata(meta)
    L.write_parquet_atomic(dst, table)


def derive_without(src: Path | str, dst: Path | str, drop: list[str], why: str) -> Path:
    """Copy the v3 dataset ``src`` to ``dst`` without the features ``drop`` (see the module docstring)."""
    from openlbm.data.dataset import DatasetMeta
    from openlbm.data.validate import require_valid

    src, dst = Path(src), Path(dst)
    meta = DatasetMeta(src)  # clear errors for a missing folder / not a dataset; recovers an interrupted finalize
    require_valid([src])
    if src.resolve() == dst.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise L.DatasetError(f"{dst}: the destination must lie outside the source dataset {src}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose an empty or new destination")
    drop = [k for k in drop if k in meta.features]
    staging = dst.parent / f".{dst.name}.partial"
    lock = lock_dir(staging, why)
    try:
        for p in list(staging.iterdir()):  # leftovers of a killed run (we hold the lock: no one else is using it)
            if p.name != LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        info = dict(meta.info)
        info["features"] = {k: v for k, v in meta.info["features"].items() if k not in drop}
        kept = {k: L.feature_from_json(k, v, src / L.INFO_PATH) for k, v in info["features"].items()}
        hf_meta = L.hf_features_meta({k: f for k, f in kept.items() if f.dtype != "video"})
        data_files = {p.resolve() for p in L.iter_data_files(src, meta.episodes, meta.data_path)}
        stat_cols = [f"stats/{k}/{s}" for k in drop for s in ("min", "max", "mean", "std", "count", "q01", "q10", "q50",
                                                                 "q90", "q99")]
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if not path.is_file() or rel in SKIPPED or any(part.startswith(".") for part in Path(rel).parts):
                continue
            out = staging / rel
            if path.resolve() in data_files:
                _rewrite_parquet(path, out, drop, hf_meta)
            elif rel.startswith(L.EPISODES_DIR + "/") and path.suffix == ".parquet":
                _rewrite_parquet(path, out, stat_cols, None)
            elif rel == L.INFO_PATH:
                L.write_json_atomic(out, info)
            elif rel == L.STATS_PATH:
                L.write_json_atomic(out, {k: v for k, v in json.loads(path.read_text()).items() if k not in drop})
            else:
                _link_or_copy(path, out)  # videos, tasks, image histograms, provenance files, README...
        L.write_json_atomic(staging / DERIVED_PATH, {
            "from": str(src.resolve()), "dropped_features": drop, "made_by": why,
            "date": datetime.now(UTC).isoformat(timespec="seconds")})
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
    return derive_without(src, dst, drop, "lbm data strip-actions")
