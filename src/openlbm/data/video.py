"""Video encode (PyAV: libx264 / libsvtav1), lossless concatenation, and frame-accurate cached decoding.

Random access is what training needs, so files are written with a short GOP (a keyframe every ``gop`` frames)
and no B-frames: any frame is at most ``gop - 1`` decodes away from a keyframe. :class:`VideoReader` keeps the
container open, seeks to the keyframe before a request, decodes forward, and keeps the recently decoded frames so
that overlapping windows (n_obs_steps > 1, neighbouring samples) cost nothing extra.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise

import av  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402

from openlbm.data.layout import DatasetError, where  # noqa: E402

CODECS = {"h264": "libx264", "av1": "libsvtav1"}
_INHERITED: list[object] = []


def encoder_options(codec: str, gop: int, crf: int | None) -> dict[str, str]:
    if codec == "h264":
        return {"g": str(gop), "crf": str(18 if crf is None else crf), "preset": "veryfast", "bf": "0", "tune": "zerolatency"}
    if codec == "av1":
        return {"g": str(gop), "crf": str(30 if crf is None else crf), "preset": "10"}
    raise ValueError(f"video_codec must be one of {sorted(CODECS)}, got {codec!r}")


def check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"video_codec must be one of {sorted(CODECS)}, got {codec!r}")
    if CODECS[codec] not in av.codecs_available:
        raise ValueError(f"video_codec={codec!r} needs the {CODECS[codec]} encoder, which this PyAV build lacks")


class VideoEncoder:
    """Streams frames into an mp4 (yuv420p, frame ``i`` shown at ``i / fps`` s), so episodes never sit in RAM."""

    def __init__(self, path: Path, fps: float, codec: str = "h264", gop: int = 2, crf: int | None = None) -> None:
        self.path, self.fps, self.codec, self.gop, self.crf = path, fps, codec, gop, crf
        self.n = 0
        self._container: av.container.OutputContainer | None = None
        self._stream = None

    def _start(self, h: int, w: int) -> None:
        if h % 2 or w % 2:
            raise ValueError(f"{where(self.path)}: yuv420p video needs even height and width, got {h}x{w}")
        rate = Fraction(self.fps).limit_denominator(1001)
        self._container = av.open(str(self.path), "w", format="mp4")
        self._stream = self._container.add_stream(CODECS[self.codec], rate=rate, options=encoder_options(self.codec, self.gop, self.crf))
        self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
        self._stream.codec_context.time_base = 1 / rate

    def add(self, image: np.ndarray) -> None:
        """Append one uint8 ``[H, W, 3]`` frame."""
        if self._container is None:
            self._start(image.shape[0], image.shape[1])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.n
        self._container.mux(self._stream.encode(frame))
        self.n += 1

    def close(self) -> None:
        """Flush and close (the file is complete after this)."""
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None

    def abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError):
                self._container.close()
            self._container = None
        self.path.unlink(missing_ok=True)


def encode_video(path: Path, frames: np.ndarray, fps: float, codec: str = "h264", gop: int = 2, crf: int | None = None) -> None:
    """Encode uint8 ``[N, H, W, 3]`` frames to ``path``."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{where(path)}: frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    enc = VideoEncoder(path, fps, codec, gop, crf)
    for f in frames:
        enc.add(f)
    enc.close()


def probe_video(path: Path) -> dict[str, object]:
    """Stream facts for validation: codec, size, fps, packet times (no decoding)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        times = [float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None]
        return {
            "codec": s.codec_context.name,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "fps": float(s.average_rate) if s.average_rate else None,
            "pix_fmt": s.codec_context.pix_fmt,
            "times": sorted(times),
        }


class RGBConverter:
    """Decoded frame -> uint8 ``[H, W, 3]`` RGB through one reused, single-threaded swscale context.

    ``frame.to_ndarray(format="rgb24")`` builds a new swscale context per frame and, with PyAV's default
    ``threads=None``, a thread pool for it: 0.45 ms per 128x128 frame here against 0.015 ms for this (measured
    interleaved, PyAV 18). At training resolutions that conversion, not decoding, was the loader's largest cost.
    """

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()

    def resize(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> ``[h, w, 3]`` (``size = (h, w)``) with swscale's area averaging (antialiased when
        shrinking). Single-threaded and torch-free, so it is safe in the converter's forked workers. Use one
        converter for decoding and another for resizing: each keeps one swscale context."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        out = self._reformatter.reformat(frame, width=size[1], height=size[0], format="rgb24", interpolation="AREA", threads=1)
        return out.to_ndarray()


def iter_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame of ``path``'s first video stream in presentation order, as ``(seconds, uint8 [H, W, 3] RGB)``
    (sequential decode, for importing foreign videos; training reads go through :class:`VideoReader`). Raises
    :class:`DatasetError` naming the file when it cannot be opened or decoded."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise DatasetError(f"{where(path)}: cannot open video ({e})") from None
    try:
        if not container.streams.video:
            raise DatasetError(f"{where(path)}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # a whole-file decode: frame threads help and no seek follows
        rgb = RGBConverter()
        try:
            for frame in container.decode(stream):
                if frame.pts is not None:
                    yield float(frame.pts * stream.time_base), rgb(frame)
        except av.error.FFmpegError as e:
            raise DatasetError(f"{where(path)}: decode failed ({e})") from None
    finally:
        container.close()


def stream_facts(path: Path) -> dict[str, float | int | None]:
    """``{"width", "height", "fps"}`` of ``path``'s first video stream from its header (``fps`` None if unknown)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DatasetError(f"{where(path)}: no video stream")
            s = c.streams.video[0]
            return {"width": s.codec_context.width, "height": s.codec_context.height,
                    "fps": float(s.average_rate) if s.average_rate else None}
    except (av.error.FFmpegError, OSError) as e:
        raise DatasetError(f"{where(path)}: cannot open video ({e})") from None


class VideoReader:
    """Keeps one container open and returns frames by timestamp, decoding as little as possible."""

    def __init__(self, path: Path, tolerance_s: float, cache_frames: int = 48, max_forward_s: float = 0.5) -> None:
        self.path = path
        self.tolerance_s = tolerance_s
        self.cache_frames = cache_frames
        self.max_forward_s = max_forward_s
        try:
            self._container = av.open(str(path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError) as e:
            raise DatasetError(f"{where(path)}: cannot open video ({e})") from None
        self._stream.thread_type = "NONE"  # DataLoader workers give the parallelism; frame threads add latency
        self._stream.codec_context.thread_count = 1  # no dav1d worker threads: no frame delay after a seek
        self._tb = self._stream.time_base
        self._gen = None
        self._last_time = -1e9
        self._cache: OrderedDict[int, av.VideoFrame | np.ndarray] = OrderedDict()
        self._rgb = RGBConverter()
        self.decoded = 0
        """Frames decoded so far (seeks decode from the previous keyframe: more than are returned)."""

    def close(self) -> None:
        self._container.close()

    def _remember(self, frame: av.VideoFrame) -> None:
        self._cache[frame.pts] = frame
        self._cache.move_to_end(frame.pts)
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)

    def _lookup(self, t: float) -> np.ndarray | None:
        pts = round(t / self._tb)
        tol_pts = self.tolerance_s / self._tb
        best = min(self._cache, key=lambda p: abs(p - pts), default=None)
        if best is None or abs(best - pts) > tol_pts:
            return None
        item = self._cache[best]
        if isinstance(item, av.VideoFrame):
            item = self._rgb(item)
            self._cache[best] = item
        return item

    def _decode_until(self, t: float) -> None:
        try:
            for frame in self._gen:
                self.decoded += 1
                if frame.pts is None:
                    continue
                self._remember(frame)
                self._last_time = float(frame.pts * self._tb)
                if self._last_time >= t - self.tolerance_s:
                    return
        except av.error.FFmpegError as e:
            raise DatasetError(f"{where(self.path)}: decode failed near t={t:.4f}s ({e})") from None
        self._gen = None

    def frame_at(self, t: float) -> np.ndarray:
        """uint8 ``[H, W, 3]`` of the frame shown at ``t`` seconds; error if none lies within the tolerance."""
        hit = self._lookup(t)
        if hit is not None:
            return hit
        ahead = t - self._last_time
        if self._gen is None or not (0 < ahead <= self.max_forward_s):
            try:
                self._container.seek(max(0, int(t / self._tb)), stream=self._stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                raise DatasetError(f"{where(self.path)}: seek to t={t:.4f}s failed ({e})") from None
            self._gen = self._container.decode(self._stream)
            self._last_time = -1e9
        self._decode_until(t)
        hit = self._lookup(t)
        if hit is None:
            near = sorted(self._cache, key=lambda p: abs(p - t / self._tb))[:1]
            got = f"nearest decoded frame at {float(near[0] * self._tb):.4f}s" if near else "no frame decoded"
            raise DatasetError(
                f"{where(self.path)}: no frame within {self.tolerance_s:.4f}s of t={t:.4f}s ({got}); "
                "the video is shorter than the data or its timestamps do not match the dataset fps"
            )
        return hit

    def frames_at(self, times: list[float]) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` for the given timestamps (decoded in time order, returned in request order). Each
        distinct timestamp is looked up and converted once: a window clamped at an episode's end repeats a frame."""
        frames = {t: self.frame_at(t) for t in sorted(set(times))}
        return np.stack([frames[t] for t in times])


class ReaderPool:
    """Open :class:`VideoReader` per file, bounded (least recently used closed first). One per process."""

    def __init__(self, tolerance_s: float, max_open: int = 64) -> None:
        self.tolerance_s = tolerance_s
        self.max_open = max_open
        self.pid = os.getpid()
        self._readers: OrderedDict[Path, VideoReader] = OrderedDict()

    def get(self, path: Path) -> VideoReader:
        if self.pid != os.getpid():
            # Forked into a DataLoader worker: FFmpeg state must not be shared, and closing the parent's containers
            # here can deadlock on locks copied mid-use; keep them referenced (never touched) and open new ones.
            _INHERITED.append(self._readers)
            self._readers = OrderedDict()
            self.pid = os.getpid()
        r = self._readers.get(path)
        if r is None:
            if not path.exists():
                raise FileNotFoundError(f"{where(path)}: video file missing")
            r = self._readers[path] = VideoReader(path, self.tolerance_s)
            while len(self._readers) > self.max_open:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(path)
        return r

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()
