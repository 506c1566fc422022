"""Image-text pairs in WebDataset tar shards: the format, a streaming reader and a crash-safe shard writer.

Format (the one web-scale image-text corpora are distributed in): a shard is a tar file whose members are grouped
into samples by *key*, the member name up to its first dot. A sample is ``KEY.jpg|jpeg|png|webp`` (exactly one
image) plus ``KEY.txt`` (the caption, UTF-8) and/or ``KEY.json`` (an object whose ``caption`` or else ``text``
field is the caption; ``.txt`` wins when both are present, as in LAION-style shards where the JSON holds metadata).
Members of one sample are consecutive in the tar; other extensions are ignored. Tars may be gzip-compressed.

Reading (``ImageTextConfig.build``) streams: tar members are read one at a time through ``webdataset``'s tar
iterators, each image is decoded and resized as soon as it is read, and the only samples held at once are the
shuffle buffer's (``shuffle_buffer`` images of ``image_size``) plus one batch, whatever the corpus size.

```
 shards ──(epoch e: shuffled by (seed, e), dealt to reader r = rank * workers + worker: order[r::ranks*workers])──►
   tar members ──► sample (image + caption, checked) ──► decode + resize ──► shuffle buffer ──► ImageTextBatch
```

A bad member (corrupt image, missing or empty caption, an image without caption or a caption without image) or an
unreadable / truncated tar stops the reader with one line naming the shard and the member; with ``skip_bad`` it
is logged (each, then a per-epoch count) and skipped instead. Never silent.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from openlbm.data.images import resize_images
from openlbm.data.layout import DatasetError
from openlbm.data.mixture import worker_context
from openlbm.types import ImageTextBatch, chw_from_hwc

log = logging.getLogger(__name__)

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Image member extensions a sample may carry (exactly one of them)."""
CAPTION_EXTS: tuple[str, ...] = ("txt", "json")
"""Caption member extensions (``txt`` preferred)."""
SHARD_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz")
"""What a folder given as a shard source is searched for."""
_MAX_LOGGED = 20
"""Bad members logged one by one per reader (the per-epoch count covers the rest)."""


class ImageTextError(DatasetError):
    """A shard or one of its members breaks the format; the message names the shard and the member."""


@dataclass(frozen=True)
class ImageTextConfig:
    """A stream of image-caption batches from WebDataset tar shards (see the module docstring for the format)."""

    shards: tuple[str, ...]
    """Shard sources: file paths, glob patterns (``data/*.tar``), brace patterns (``data/shard-{000000..000099}.tar``)
    or folders (every ``*.tar`` / ``*.tar.gz`` / ``*.tgz`` inside). Each must match at least one file."""
    image_size: tuple[int, int] = (128, 128)
    """``(height, width)`` every image is resized to (bilinear, antialiased: the same resize the robot-data mixture
    applies to camera images)."""
    crop: Literal["center", "stretch"] = "center"
    """``center``: crop the largest centred region with the target aspect ratio, then resize (no distortion);
    ``stretch``: resize the whole image."""
    batch_size: int = 32
    """Samples per batch."""
    shuffle_buffer: int = 1000
    """Decoded samples held for shuffling (1 = no shuffling, shard order only). Bounds the reader's memory."""
    seed: int = 0
    """Seeds the per-epoch shard order (with the epoch number) and each reader's shuffle buffer."""
    epochs: int | None = None
    """Passes over the shards; ``None`` = cycle forever (what a training loop wants: every rank never runs dry)."""
    skip_bad: bool = False
    """Skip bad members (each logged as a warning with shard and member, plus a per-epoch count) instead of
    stopping at the first one with an error."""
    num_workers: int = 0
    """DataLoader worker processes decoding in parallel (0 = read in the calling process). Shards are dealt to
    ``world_size * max(1, num_workers)`` readers, so there must be at least that many shards."""
    prefetch_factor: int = 2
    """Batches each worker keeps ready (with ``num_workers > 0``)."""

    def __post_init__(self) -> None:
        if isinstance(self.shards, str) or not self.shards:
            raise ValueError(f"ImageTextConfig.shards must be a non-empty list of paths/patterns, got {self.shards!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"ImageTextConfig.image_size must be (height, width) >= 1, got {self.image_size}")
        if self.crop not in ("center", "stretch"):
            raise ValueError(f"ImageTextConfig.crop must be 'center' or 'stretch', got {self.crop!r}")
        for name in ("batch_size", "shuffle_buffer", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageTextConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or (self.epochs is not None and self.epochs < 1):
            raise ValueError(f"ImageTextConfig: num_workers must be >= 0 and epochs >= 1 or None, got "
                             f"{self.num_workers} / {self.epochs}")

    def build(self, rank: int = 0, world_size: int = 1, start_batch: int = 0) -> ImageTextStream | DataLoader:
        """This rank's stream of :class:`~openlbm.types.ImageTextBatch` (a DataLoader when ``num_workers > 0``).

        Ranks read disjoint shards in every epoch and together cover them all. ``start_batch`` resumes a stream
        that already delivered that many batches to this rank: the stream is replayed (read and decoded, not
        batched) up to there, so the batches that follow are exactly those of an uninterrupted run (with an
        infinite stream; a finite one may end earlier on some workers).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        shards = expand_shards(self.shards)
        readers = world_size * max(1, self.num_workers)
        if len(shards) < readers:
            raise ValueError(f"{len(shards)} shard(s) ({shards[0]}, ...) cannot be dealt to {world_size} rank(s) x "
                             f"{max(1, self.num_workers)} reader(s) each: give at least {readers} shards or use fewer "
                             "workers")
        stream = ImageTextStream(self, tuple(str(s) for s in shards), rank, world_size, start_batch)
        if self.num_workers == 0:
            return stream

        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, prefetch_factor=self.prefetch_factor,
                          persistent_workers=False, multiprocessing_context=worker_context())


def expand_shards(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Every shard file the patterns name, without duplicates, in pattern order (each pattern's files sorted).

    Patterns are expanded as ``webdataset`` expands shard URLs (``{000000..000099}`` braces, ``a.tar::b.tar``
    lists), then globbed; a folder stands for its ``*.tar`` / ``*.tar.gz`` / ``*.tgz`` files. A pattern that
    matches no file raises ``ValueError`` naming it.
    """
    from webdataset.shardlists import expand_urls

    out: dict[Path, None] = {}
    for pattern in patterns:
        found: list[Path] = []
        for p in expand_urls(str(pattern)):
            path = Path(p).expanduser()
            if path.is_dir():
                found += sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(SHARD_SUFFIXES))
            elif glob.has_magic(str(path)):
                found += sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
            elif path.is_file():
                found.append(path)
            else:
                raise ValueError(f"image-text shard {path} does not exist")
        if not found:
            raise ValueError(f"image-text shards {pattern!r} match no file (expected *.tar shards)")
        out.update(dict.fromkeys(found))
    return list(out)


# -- one sample ----------------------------------------------------------------------------------------------------
def caption_of(sample: dict[str, Any], where: str) -> str:
    """The caption of a grouped WebDataset sample (``txt``, else ``json`` ``caption`` / ``text``); ``where`` names
    the shard and member in errors."""
    if "txt" in sample:
        raw = sample["txt"]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ImageTextError(f"{where}.txt: caption is not UTF-8 text ({e})") from None
        src = "txt"
    elif "json" in sample:
        try:
            obj = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ImageTextError(f"{where}.json: invalid JSON ({e})") from None
        text = obj.get("caption", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise ImageTextError(f"{where}.json: expected an object with a string 'caption' or 'text' field")
        src = "json"
    else:
        key = sample["__key__"]
        raise ImageTextError(f"{where}: image without a caption (expected {key}.txt or {key}.json next to it)")
    if not text.strip():
        raise ImageTextError(f"{where}.{src}: empty caption")
    return text.strip()


def decode_image(data: bytes, size: tuple[int, int], crop: str, where: str) -> torch.Tensor:
    """Encoded image bytes -> uint8 ``[3, H, W]`` of ``size`` (RGB; grey / alpha / palette images converted)."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (w, h))  # JPEG: decode at a reduced DCT scale that still covers the target (fast)
            im.load()
            rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageTextError(f"{where}: corrupt image ({type(e).__name__}: {e})") from None
    if crop == "center":
        rgb = _center_crop(rgb, w / h)
    img = chw_from_hwc(rgb)  # [h0, w0, 3] -> [3, h0, w0]
    return resize_images(img, (h, w))


def _center_crop(rgb: np.ndarray, aspect: float) -> np.ndarray:
    """The largest centred region of ``rgb`` ``[h, w, 3]`` whose width / height is ``aspect``."""
    h, w = rgb.shape[:2]
    if w > h * aspect:
        cw = max(1, round(h * aspect))
        x0 = (w - cw) // 2
        return rgb[:, x0 : x0 + cw]
    ch = max(1, round(w / aspect))
    y0 = (h - ch) // 2
    return rgb[y0 : y0 + ch]


def parse_sample(sample: dict[str, Any], size: tuple[int, int], crop: str) -> tuple[torch.Tensor, str]:
    """A grouped WebDataset sample -> (uint8 ``[3, H, W]``, caption); :class:`ImageTextError` if it is bad."""
    where = f"{sample['__url__']}: member {sample['__key__']}"
    images = [e for e in IMAGE_EXTS if e in sample]
    if not images:
        what = "caption without an image" if any(e in sample for e in CAPTION_EXTS) else "no image"
        raise ImageTextError(f"{where}: {what} (expected {sample['__key__']}.jpg|jpeg|png|webp)")
    if len(images) > 1:
        raise ImageTextError(f"{where}: {len(images)} images ({', '.join(images)}); a sample holds exactly one")
    caption = caption_of(sample, where)
    return decode_image(sample[images[0]], size, crop, f"{where}.{images[0]}"), caption


# -- reading a shard -----------------------------------------------------------------------------------------------
def shard_samples(shard: str) -> Iterator[dict[str, Any]]:
    """The grouped samples of one shard (``{"__key__", "__url__", ext: bytes, ...}``), read as a stream.

    An unreadable or truncated tar raises :class:`ImageTextError` naming the shard and the last member read.
    """
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    last = {"name": None}

    def tracked(files: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for f in files:
            last["name"] = f.get("fname", last["name"])
            yield f

    files = tar_file_expander(url_opener([{"url": shard}]))
    try:
        yield from group_by_keys(tracked(files))
    except Exception as e:  # tarfile / gzip / OS errors surface here, decorated by webdataset with the stream
        # webdataset appends " @ <stream repr>" to the message and the stream / url to args: keep the cause only
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e.args[0]) if e.args else ""
        msg = re.sub(r" @ <.*$", "", msg)
        at = f"after member {last['name']}" if last["name"] else "at its first member"
        raise ImageTextError(f"{shard}: unreadable or truncated tar {at} ({type(e).__name__}: {msg})") from None


class ImageTextStream(IterableDataset):
    """One rank's reader (and, inside a DataLoader worker, that worker's share): yields :class:`ImageTextBatch`."""

    def __init__(self, cfg: ImageTextConfig, shards: tuple[str, ...], rank: int, world_size: int,
                 start_batch: int = 0) -> None:
        self.cfg, self.shards, self.rank, self.world_size = cfg, shards, rank, world_size
        self.start_batch = start_batch
        self.bad = 0
        """Bad members skipped so far by this reader (``skip_bad``)."""

    def reader_slot(self) -> tuple[int, int, int, int]:
        """``(reader, readers, worker, workers)``: this reader's index among all ranks x workers.

        A DataLoader takes batch ``i`` from worker ``i % workers``, starting with worker 0. The resumed stream's
        next batch (``start_batch``) was made by worker ``start_batch % workers`` of the original run, so DataLoader
        worker ``w`` plays the part of original worker ``(w + start_batch) % workers``.
        """
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker = ((info.id if info is not None else 0) + self.start_batch) % workers
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def epoch_shards(self, epoch: int) -> list[str]:
        """This reader's shards in ``epoch``: all shards shuffled by ``(seed, epoch)``, dealt round-robin."""
        reader, readers, _, _ = self.reader_slot()
        order = list(self.shards)
        random.Random(f"openlbm-imagetext/{self.cfg.seed}/{epoch}").shuffle(order)
        return order[reader::readers]

    def samples(self) -> Iterator[tuple[torch.Tensor, str, str, str]]:
        """Decoded ``(image [3, H, W], caption, shard, key)`` in shard order, epoch after epoch."""
        epoch = 0
        while self.cfg.epochs is None or epoch < self.cfg.epochs:
            good, bad0 = 0, self.bad
            mine = self.epoch_shards(epoch)
            for shard in mine:
                try:
                    for s in shard_samples(shard):
                        try:
                            image, caption = parse_sample(s, self.cfg.image_size, self.cfg.crop)
                        except ImageTextError as e:
                            self._skip(e)
                            continue
                        good += 1
                        yield image, caption, shard, s["__key__"]
                except ImageTextError as e:  # the tar itself: the rest of this shard is lost
                    self._skip(e)
            if self.bad > bad0:
                log.warning("image-text epoch %d: skipped %d bad member(s) in %d shard(s) of reader %d", epoch,
                            self.bad - bad0, len(mine), self.reader_slot()[0])
            if good == 0:
                raise ImageTextError(f"no readable image-text sample in this reader's {len(mine)} shard(s) "
                                     f"({', '.join(mine[:3])}{', ...' if len(mine) > 3 else ''}) in epoch {epoch}")
            epoch += 1

    def _skip(self, e: ImageTextError) -> None:
        if not self.cfg.skip_bad:
            raise e
        self.bad += 1
        if self.bad <= _MAX_LOGGED:
            log.warning("skipping bad image-text member: %s", e)

    def __iter__(self) -> Iterator[ImageTextBatch]:
        from webdataset.filters import shuffle

        reader, _, worker, workers = self.reader_slot()
        stream: Iterator[tuple[torch.Tensor, str, str, str]] = self.samples()
        if self.cfg.shuffle_buffer > 1:
            rng = random.Random(f"openlbm-imagetext/{self.cfg.seed}/reader{reader}")
            stream = shuffle(bufsize=self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(stream)
        # this (original) worker made batches worker, worker + workers, ... of the stream: skip those before start
        skip = (self.start_batch - worker + workers - 1) // workers * self.cfg.batch_size
        rows: list[tuple[torch.Tensor, str, str, str]] = []
        for row in stream:
            if skip > 0:
                skip -= 1
                continue
            rows.append(row)
            if len(rows) == self.cfg.batch_size:
                yield collate_rows(rows)
                rows = []
        if rows:
            yield collate_rows(rows)


def collate_rows(rows: Sequence[tuple[torch.Tensor, str, str, str]]) -> ImageTextBatch:
    """``(image [3, H, W], caption, shard, key)`` rows -> an :class:`ImageTextBatch` (``images`` ``[B, 3, H, W]``)."""
    return ImageTextBatch(images=torch.stack([r[0] for r in rows]), text=[r[1] for r in rows],
                          meta={"shard": [r[2] for r in rows], "key": [r[3] for r in rows]})


# -- writing -------------------------------------------------------------------------------------------------------
def encode_image(rgb: np.ndarray, fmt: Literal["jpg", "png", "webp"] = "jpg", quality: int = 95) -> bytes:
    """uint8 ``[H, W, 3]`` -> encoded bytes (the inverse of :func:`decode_image` up to compression)."""
    from PIL import Image

    buf = io.BytesIO()
    kind = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format=kind, quality=quality)
    return buf.getvalue()


class ShardSink:
    """Writes samples into ``<folder>/<prefix>-NNNNNN.tar`` shards of ``shard_size`` samples, crash-safely.

    A shard is written (with ``webdataset.TarWriter``) to ``<name>.tmp``, fsynced, and renamed to its final name
    only when complete, so a folder never holds a half-written ``.tar``; ``on_shard(name, samples)`` runs after each
    rename (the caller records its progress there). ``close()`` completes the last, partial shard.
    """

    def __init__(self, folder: Path, shard_size: int, start_shard: int = 0, prefix: str = "shard",
                 on_shard: Any = None) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder, self.shard_size, self.prefix, self.on_shard = Path(folder), shard_size, prefix, on_shard
        self.next_shard = start_shard
        self._tar: Any = None
        self._file: Any = None
        self._count = 0

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``members`` maps extensions (``"jpg"``, ``"txt"``, ``"json"``) to bytes."""
        import webdataset as wds

        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (the key is the name up to the first dot)")
        if self._tar is None:
            self._file = open(self.folder / (self.shard_name(self.next_shard) + ".tmp"), "wb")  # noqa: SIM115
            self._tar = wds.TarWriter(self._file, encoder=False, mtime=0)  # mtime 0: byte-identical reruns
        self._tar.write({"__key__": key, **members})
        self._count += 1
        if self._count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        name = self.shard_name(self.next_shard)
        self._tar.close()  # writes the end-of-archive blocks; the file object stays ours
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.folder / (name + ".tmp"), self.folder / name)
        _fsync_dir(self.folder)
        count = self._count
        self._tar, self._file, self._count = None, None, 0
        self.next_shard += 1
        if self.on_shard is not None:
            self.on_shard(name, count)

    def close(self) -> None:
        """Complete the partial last shard (if any sample is pending)."""
        if self._tar is not None:
            self._finish()

    def abandon(self) -> None:
        """Drop the shard in progress (its ``.tmp``), e.g. after an error; complete shards stay."""
        if self._file is not None:
            self._file.close()
            (self.folder / (self.shard_name(self.next_shard) + ".tmp")).unlink(missing_ok=True)
            self._tar, self._file, self._count = None, None, 0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
