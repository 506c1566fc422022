"""Feature caches: a frozen vision backbone's output for every frame of one dataset camera, computed once.

A cache is one folder per (dataset, camera set, image size, encoder)::

    cache.json   {"format": "openlbm.feature_cache", "version": 1, "dataset": {"root", "fingerprint"},
                  "encoder": {"fingerprint", "config"}, "image_size": [H, W], "num_frames": N,
                  "cameras": {"observation.images.corner2": {"file": "corner2.npy", "shape": [C, h, w]}, ...}}
    corner2.npy  float16 [N, C, h, w]: row = the dataset's global frame index (an ``.npy``, memory-mapped on read)

The folder name carries both fingerprints, so a changed dataset or encoder gets a new folder and never reads a stale
one; :meth:`FeatureCache.open` checks them again against ``cache.json``. Writing happens in a locked ``.partial``
sibling renamed into place once ``cache.json`` is written: a crash at any moment leaves either the whole cache or no
cache (a rerun clears the leftover), and two processes never write one cache (the second waits for the first).
Reading is memory-mapped, so the resident memory is what the OS chooses to keep, never the whole cache; each
DataLoader worker opens its own maps.

This module knows nothing of models: the encoder is a fingerprint string and a function from uint8 frames to
arrays (:func:`build_cache`'s ``encode``), supplied by the caller (``openlbm.train.features``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.errors import LockedError
from openlbm.locking import LOCK_FILE, lock_dir

log = logging.getLogger(__name__)

FORMAT = "openlbm.feature_cache"
VERSION = 1
CACHE_FILE = "cache.json"
EncodeFn = Callable[[np.ndarray], np.ndarray]
"""uint8 ``[n, H, W, 3]`` frames as decoded -> float16 ``[n, C, h, w]`` features (resizing to the policy's image
size, as training would, is the encoder's business)."""


def dataset_fingerprint(root: Path) -> str:
    """sha256 over the dataset's metadata files (their bytes) and every data/video file's path and size: any
    re-recording, re-encoding, added or removed episode changes it. (Contents of equal-size media files are not
    hashed: that is what content checksums in the metadata are for.)"""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("meta/"):
            h.update(f"{rel}\0".encode())
            h.update(path.read_bytes())
        elif rel.startswith(("data/", "videos/")):
            h.update(f"{rel}\0{path.stat().st_size}\0".encode())
    return h.hexdigest()


def cache_dir(cache_root: Path, dataset: Path, cameras: Sequence[str], image_size: tuple[int, int],
              dataset_fp: str, encoder_fp: str) -> Path:
    """Where the cache of ``cameras`` of ``dataset`` at ``image_size`` under one encoder lives."""
    key = hashlib.sha256(json.dumps([dataset_fp, encoder_fp, sorted(cameras), list(image_size)]).encode())
    return Path(cache_root) / f"{Path(dataset).name}-{key.hexdigest()[:16]}"


class FeatureCache:
    """Read side of one cache folder: ``rows(camera, global_indices) -> float16 [n, C, h, w]``."""

    def __init__(self, path: Path, info: dict[str, Any]) -> None:
        self.path, self.info = Path(path), info
        self.cameras = {k: tuple(v["shape"]) for k, v in info["cameras"].items()}
        self._maps: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: Path, dataset_fp: str, encoder_fp: str) -> FeatureCache:
        """Open a finished cache; ``ValueError`` naming the folder when it belongs to another dataset or encoder."""
        path = Path(path)
        info = json.loads((path / CACHE_FILE).read_text())
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise ValueError(f"{path}: not an openlbm feature cache of version {VERSION} ({CACHE_FILE})")
        if info["dataset"]["fingerprint"] != dataset_fp:
            raise ValueError(f"{path}: cached for another version of {info['dataset']['root']} (dataset changed since)")
        if info["encoder"]["fingerprint"] != encoder_fp:
            raise ValueError(f"{path}: cached with other encoder weights or settings than this policy's")
        for cam, entry in info["cameras"].items():
            file = path / entry["file"]
            arr = np.load(file, mmap_mode="r")
            if arr.dtype != np.float16 or arr.shape != (info["num_frames"], *entry["shape"]):
                raise ValueError(f"{file}: expected float16 {[info['num_frames'], *entry['shape']]} features of "
                                 f"{cam}, found {arr.dtype} {list(arr.shape)}")
        return cls(path, info)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}  # memory maps never cross processes: each worker opens its own

    def rows(self, camera: str, indices: np.ndarray) -> np.ndarray:
        if camera not in self._maps:
            self._maps[camera] = np.load(self.path / self.info["cameras"][camera]["file"], mmap_mode="r")
        return np.ascontiguousarray(self._maps[camera][indices])


def _write(tmp: Path, root: Path, cameras: Sequence[str], encode: EncodeFn, info: dict[str, Any],
           progress: Callable[[int, int], None] | None) -> None:
    """Encode every episode's frames (decoded one episode at a time) into one float16 memmap per camera."""
    from openlbm.data.dataset import RobotDataset

    ds = RobotDataset(root, camera_keys=list(cameras))
    n_total, n_eps = ds.meta.num_frames, ds.meta.num_episodes
    maps: dict[str, np.ndarray] = {}
    for ep in range(n_eps):
        frames, start = ds.get_episode(ep), int(ds.meta.ep_from[ep])
        for cam in cameras:
            feats = encode(frames[cam])
            if feats.dtype != np.float16 or feats.ndim != 4 or len(feats) != len(frames[cam]):
                raise ValueError(f"feature encoder returned {feats.dtype} {feats.shape} for {len(frames[cam])} frames")
            if cam not in maps:
                file = tmp / f"{cam.rsplit('.', 1)[-1]}.npy"
                maps[cam] = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(n_total, *feats.shape[1:]))
                info["cameras"][cam] = {"file": file.name, "shape": list(feats.shape[1:])}
            maps[cam][start : start + len(feats)] = feats
        if progress is not None:
            progress(ep + 1, n_eps)
    for arr in maps.values():
        arr.flush()
    info["num_frames"] = n_total
    with open(tmp / CACHE_FILE, "w") as f:
        f.write(json.dumps(info, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())


def build_cache(path: Path, root: Path, cameras: Sequence[str], image_size: tuple[int, int], dataset_fp: str,
                encoder_fp: str, encoder_config: dict[str, Any], encode: EncodeFn,
                progress: Callable[[int, int], None] | None = None, poll_s: float = 2.0) -> FeatureCache:
    """Open the cache at ``path``, building it first when missing (waiting while another process builds it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    waited = False
    while True:
        if (path / CACHE_FILE).is_file():
            return FeatureCache.open(path, dataset_fp, encoder_fp)
        try:
            lock = lock_dir(tmp, "a feature cache build")
        except LockedError:
            if not waited:
                log.info("waiting for another process building the feature cache %s", path)
                waited = True
            time.sleep(poll_s)
            continue
        try:
            if (path / CACHE_FILE).is_file():  # finished by the other process between the check and the lock
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            for leftover in tmp.iterdir():  # a crashed build: start over
                if leftover.name != LOCK_FILE:
                    leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
            info = {"format": FORMAT, "version": VERSION,
                    "dataset": {"root": str(Path(root).resolve()), "fingerprint": dataset_fp},
                    "encoder": {"fingerprint": encoder_fp, "config": encoder_config},
                    "image_size": list(image_size), "cameras": {}}
            t0 = time.perf_counter()
            _write(tmp, Path(root), cameras, encode, info, progress)
            (tmp / LOCK_FILE).unlink()
            os.replace(tmp, path)  # atomic: the folder appears complete or not at all
            log.info("feature cache %s built in %.1f s", path, time.perf_counter() - t0)
        finally:
            lock.release()
