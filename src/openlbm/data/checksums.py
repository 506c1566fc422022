"""Content hashes of a dataset's data and video files: ``meta/checksums.jsonl``.

One JSON object per line, ``{"path": "<relative path>", "sha256": "<hex>"}``; a later line for the same path
replaces an earlier one. The writer appends the lines of an episode's files (fsynced) *before* the episode's row
commits it, so every committed file has its hash; ``finalize`` and derived copies write the whole file at once
(``finalize`` through its journal, with the joined files it describes). Why lines appended rather than one JSON
object rewritten: an unfinalized recording has one file per episode and camera, and rewriting all of their hashes at
every ``save_episode`` would cost O(episodes^2). A torn last line (a crash mid-append) is ignored: its episode never
committed. ``lbm data validate`` compares each referenced file's sha256 with its line (``--fast`` skips it).

The file is openlbm's own: LeRobot ignores unknown files in ``meta/``, so the dataset stays loadable there.
Datasets written by other tools have no such file; they load and validate as before (with a note), and
:func:`add_missing` (``lbm data validate --write-hashes``) records their hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from openlbm.data import layout as L

CHECKSUMS_PATH = "meta/checksums.jsonl"
_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (bounded memory for multi-GB videos)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def read_checksums(root: Path) -> dict[str, str] | None:
    """Relative path -> recorded sha256; ``None`` when the dataset has no checksum file (written by another tool)."""
    path = Path(root) / CHECKSUMS_PATH
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        try:
            entry = json.loads(line)
            out[str(entry["path"])] = str(entry["sha256"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if i == len(lines) - 1:
                break  # torn by a crash mid-append: that episode never committed
            raise L.DatasetError(f"{L.where(path)}: line {i + 1} is not a {{path, sha256}} entry: {line[:80]!r}") from None
    return out


def _lines(entries: Mapping[str, str]) -> str:
    return "".join(json.dumps({"path": p, "sha256": h}) + "\n" for p, h in entries.items())


def append(root: Path, entries: Mapping[str, str]) -> None:
    """Add lines for ``entries`` (relative path -> sha256), fsynced: they must be on disk before the commit point."""
    path = Path(root) / CHECKSUMS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(_lines(entries))
        f.flush()
        os.fsync(f.fileno())


def write(path: Path, entries: Mapping[str, str]) -> None:
    """Write a whole checksum file at ``path`` atomically (sorted by path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = L.tmp_path_for(path)
    tmp.write_text(_lines(dict(sorted(entries.items()))))
    L.commit_file(tmp, path)


def hash_files(root: Path, rels: Iterable[str]) -> dict[str, str]:
    """``{rel: sha256}`` of the given files under ``root``."""
    return {rel: file_sha256(Path(root) / rel) for rel in rels}


def content_files(info: Mapping[str, Any], episodes: list[dict[str, Any]], data: bool = True,
                  videos: bool = True) -> dict[str, list[int]]:
    """The data and video files the episode rows reference (relative path -> the episodes that use it)."""
    out: dict[str, list[int]] = {}
    video_keys = [k for k, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") == "video"]
    template = str(info.get("video_path") or L.VIDEO_PATH)
    for e, r in enumerate(episodes):
        rels = []
        try:
            if data:
                rels.append(str(info["data_path"]).format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]))
            for k in video_keys if videos else []:
                rels.append(template.format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                            file_index=r[f"videos/{k}/file_index"]))
        except (KeyError, TypeError, ValueError):
            pass  # a row without offsets: reported by validate's metadata checks
        for rel in rels:
            out.setdefault(rel, []).append(e)
    return out


def add_missing(root: Path) -> int:
    """Record the sha256 of every referenced data/video file that has none (``lbm data validate --write-hashes``),
    under the dataset's writer lock. Returns how many were added. Files that already have a hash keep it: this
    never blesses a changed file (``validate`` checks those first)."""
    from openlbm.data.writer import recover
    from openlbm.locking import lock_dir

    root = Path(root)
    lock = lock_dir(root, "lbm data validate --write-hashes")
    try:
        recover(root)
        recorded = read_checksums(root) or {}
        refs = content_files(L.read_info(root), L.read_episodes(root))
        missing = [rel for rel in refs if rel not in recorded and (root / rel).is_file()]
        keep = {rel: h for rel, h in recorded.items() if rel in refs}
        write(root / CHECKSUMS_PATH, {**keep, **hash_files(root, missing)})
        return len(missing)
    finally:
        lock.release()
