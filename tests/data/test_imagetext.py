"""The image-text WebDataset reader and shard writer: round trip, captions, resizing, rank / worker split, resume,
bounded memory, and one-line errors naming the shard and member for every kind of bad shard."""

from __future__ import annotations

import gc
import json
import logging
import tracemalloc
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from openlbm.data.imagetext import ImageTextConfig, ImageTextError, ShardSink, encode_image, expand_shards
from openlbm.errors import one_line


def _image(i: int, h: int = 12, w: int = 20) -> np.ndarray:
    """A deterministic, sample-specific uint8 [h, w, 3] picture."""
    return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(folder: Path, n_shards: int, per_shard: int, h: int = 12, w: int = 20, fmt: str = "png") -> list[str]:
    """``n_shards`` shards of ``per_shard`` samples (key i, caption ``"caption i"``) through :class:`ShardSink`."""
    folder.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    sink = ShardSink(folder, per_shard, on_shard=lambda name, count: done.append(name))
    for i in range(n_shards * per_shard):
        sink.write(f"{i:06d}", {fmt: encode_image(_image(i, h, w), fmt), "txt": f"caption {i}".encode()})
    sink.close()
    return done


def _keys(batches) -> list[str]:  # noqa: ANN001
    return [k for b in batches for k in b.meta["key"]]


def test_round_trip_exact_pixels_captions_and_meta(tmp_path: Path) -> None:
    names = _write(tmp_path / "s", n_shards=3, per_shard=5)
    assert names == [f"shard-00000{i}.tar" for i in range(3)] and not list((tmp_path / "s").glob("*.tmp"))
    cfg = ImageTextConfig(shards=(str(tmp_path / "s"),), image_size=(12, 20), batch_size=4, shuffle_buffer=1, epochs=1)
    batches = list(cfg.build())
    assert [b.batch_size for b in batches] == [4, 4, 4, 3]
    seen = set()
    for b in batches:
        b.validate()
        assert b.images.dtype == torch.uint8 and tuple(b.images.shape[1:]) == (3, 12, 20)
        for img, text, shard, key in zip(b.images, b.text, b.meta["shard"], b.meta["key"], strict=True):
            i = int(key)
            assert text == f"caption {i}" and Path(shard).name == f"shard-{i // 5:06d}.tar"
            assert torch.equal(img, torch.from_numpy(_image(i)).permute(2, 0, 1)), f"pixels of {key} changed (PNG)"
            seen.add(i)
    assert seen == set(range(15))


def test_json_captions_and_txt_precedence(tmp_path: Path) -> None:
    png = encode_image(_image(0), "png")
    with wds.TarWriter(str(tmp_path / "a.tar"), encoder=False) as w:
        w.write({"__key__": "000000", "png": png, "json": json.dumps({"caption": "from caption", "url": "x"}).encode()})
        w.write({"__key__": "000001", "jpg": encode_image(_image(1)), "json": json.dumps({"text": "from text"}).encode()})
        w.write({"__key__": "000002", "webp": encode_image(_image(2), "webp"), "txt": b"  from txt \n",
                 "json": json.dumps({"caption": "ignored"}).encode(), "cls": b"3"})
    cfg = ImageTextConfig(shards=(str(tmp_path / "*.tar"),), image_size=(8, 8), batch_size=3, shuffle_buffer=1, epochs=1)
    (batch,) = list(cfg.build())
    assert batch.text == ["from caption", "from text", "from txt"]


def test_center_crop_keeps_the_middle_and_stretch_keeps_everything(tmp_path: Path) -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20, 0] = 255  # red left quarter
    img[:, 20:60, 1] = 255  # green middle half
    img[:, 60:, 2] = 255  # blue right quarter
    with wds.TarWriter(str(tmp_path / "a.tar"), encoder=False) as w:
        w.write({"__key__": "k", "png": encode_image(img, "png"), "txt": b"stripes"})
    base = dict(shards=(str(tmp_path / "a.tar"),), image_size=(16, 16), batch_size=1, shuffle_buffer=1, epochs=1)
    (center,) = list(ImageTextConfig(**base).build())
    (stretch,) = list(ImageTextConfig(**base, crop="stretch").build())
    mean = center.images[0].float().mean(dim=(1, 2))  # [3]
    assert mean[1] > 250 and mean[0] < 5 and mean[2] < 5, mean
    mean = stretch.images[0].float().mean(dim=(1, 2))
    assert mean[0] > 50 and mean[1] > 100 and mean[2] > 50, mean


def test_ranks_read_disjoint_shards_that_cover_all_and_reshuffle_per_epoch(tmp_path: Path) -> None:
    _write(tmp_path / "s", n_shards=12, per_shard=3)
    cfg = ImageTextConfig(shards=(str(tmp_path / "s/shard-{000000..000011}.tar"),), image_size=(8, 8), batch_size=2,
                          shuffle_buffer=4, epochs=1)
    per_rank = [_keys(cfg.build(rank=r, world_size=3)) for r in range(3)]
    assert all(len(k) == len(set(k)) == 12 for k in per_rank)  # 4 shards x 3 samples each
    assert set().union(*map(set, per_rank)) == {f"{i:06d}" for i in range(36)}
    streams = [cfg.build(rank=r, world_size=3) for r in range(3)]
    for epoch in range(3):
        shards = [set(s.epoch_shards(epoch)) for s in streams]
        assert sum(map(len, shards)) == 12 and len(set().union(*shards)) == 12
    assert streams[0].epoch_shards(0) != streams[0].epoch_shards(1), "the epoch must be in the shard-order seed"
    other = ImageTextConfig(**{**cfg.__dict__, "seed": 1}).build(rank=0, world_size=3)
    assert other.epoch_shards(0) != streams[0].epoch_shards(0)
    with pytest.raises(ValueError, match="12 shard"):
        cfg.build(rank=0, world_size=13)


def test_infinite_stream_cycles_epochs_and_start_batch_resumes_exactly(tmp_path: Path) -> None:
    _write(tmp_path / "s", n_shards=4, per_shard=5)
    once = ImageTextConfig(shards=(str(tmp_path / "s"),), image_size=(8, 8), batch_size=5, shuffle_buffer=1)
    counts = Counter(_keys(islice(once.build(), 12)))  # 3 epochs of 20 samples, no shuffle buffer
    assert set(counts.values()) == {3} and len(counts) == 20
    cfg = ImageTextConfig(shards=(str(tmp_path / "s"),), image_size=(8, 8), batch_size=3, shuffle_buffer=7, seed=5)
    full = list(islice(cfg.build(), 20))
    resumed = list(islice(cfg.build(start_batch=8), 12))
    assert [b.meta["key"] for b in resumed] == [b.meta["key"] for b in full[8:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, full[8:], strict=True))
    assert _keys(full[:7]) != sorted(_keys(full[:7])), "a shuffle buffer of 7 should reorder samples"


def test_dataloader_workers_split_shards_and_resume(tmp_path: Path) -> None:
    _write(tmp_path / "s", n_shards=6, per_shard=4)
    base = dict(shards=(str(tmp_path / "s"),), image_size=(8, 8), batch_size=2, shuffle_buffer=3, num_workers=2)
    keys = _keys(ImageTextConfig(**base, epochs=1).build())
    assert sorted(keys) == [f"{i:06d}" for i in range(24)]
    cfg = ImageTextConfig(**base)
    full = [b.meta["key"] for b in islice(cfg.build(), 9)]
    resumed = [b.meta["key"] for b in islice(cfg.build(start_batch=5), 4)]
    assert resumed == full[5:]


def test_memory_is_bounded_by_the_shuffle_buffer_not_the_corpus(tmp_path: Path) -> None:
    _write(tmp_path / "s", n_shards=40, per_shard=30, h=48, w=48)  # 1200 samples, ~8 MB of noise PNGs
    corpus = sum(f.stat().st_size for f in (tmp_path / "s").glob("*.tar"))
    # image_size = the stored size: decoded images stay numpy-backed, so tracemalloc sees what the buffer holds
    cfg = ImageTextConfig(shards=(str(tmp_path / "s"),), image_size=(48, 48), batch_size=8, shuffle_buffer=32,
                          epochs=1, seed=3)

    def peak(n_batches: int | None) -> int:
        gc.collect()
        tracemalloc.start()
        try:
            n = sum(b.batch_size for b in islice(cfg.build(), n_batches))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert n_batches is None or n == 8 * n_batches

    few, everything = peak(20), peak(None)  # 160 samples vs all 1200
    buffer_bytes = 32 * 48 * 48 * 3
    assert everything < few * 1.3 + 256_000, (few, everything)
    assert everything < corpus / 4 and everything < 10 * buffer_bytes + 2_000_000, (everything, corpus)


# -- bad shards ----------------------------------------------------------------------------------------------------
def _good(i: int) -> dict[str, bytes]:
    return {"jpg": encode_image(_image(i)), "txt": f"caption {i}".encode()}


def _tar(path: Path, samples: list[dict]) -> Path:
    with wds.TarWriter(str(path), encoder=False) as w:
        for s in samples:
            w.write(s)
    return path


def _with_bad(path: Path, bad: dict[str, bytes]) -> Path:
    return _tar(path, [{"__key__": "000000", **_good(0)}, {"__key__": "000001", **bad}, {"__key__": "000002", **_good(2)}])


def _truncated(path: Path) -> Path:
    _tar(path, [{"__key__": f"{i:06d}", **_good(i)} for i in range(4)])
    data = path.read_bytes()
    cut = data.index(encode_image(_image(2))) + 100  # inside 000002.jpg's data
    path.write_bytes(data[:cut])
    return path


BAD: dict[str, tuple] = {
    "corrupt jpg": (lambda p: _with_bad(p, {"jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "txt": b"x"}),
                    ("member 000001.jpg", "corrupt image")),
    "truncated jpg": (lambda p: _with_bad(p, {"jpg": encode_image(_image(1, 64, 64))[:300], "txt": b"x"}),
                      ("member 000001.jpg", "corrupt image")),
    "missing caption": (lambda p: _with_bad(p, {"jpg": encode_image(_image(1))}),
                        ("member 000001", "image without a caption")),
    "empty caption": (lambda p: _with_bad(p, {"jpg": encode_image(_image(1)), "txt": b" \n "}),
                      ("member 000001.txt", "empty caption")),
    "caption only": (lambda p: _with_bad(p, {"txt": b"a caption"}), ("member 000001", "caption without an image")),
    "json without caption": (lambda p: _with_bad(p, {"png": encode_image(_image(1), "png"), "json": b'{"url": 1}'}),
                             ("member 000001.json", "'caption' or 'text'")),
    "truncated tar": (_truncated, ("after member 000001.txt", "truncated tar")),
    "not a tar": (lambda p: (p.write_bytes(b"hello, not a tar" * 100), p)[1], ("unreadable or truncated tar",)),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_shard_is_one_line_naming_shard_and_member(tmp_path: Path, kind: str) -> None:
    make, must_name = BAD[kind]
    shard = make(tmp_path / "bad-000000.tar")
    cfg = ImageTextConfig(shards=(str(shard),), image_size=(8, 8), batch_size=2, shuffle_buffer=1, epochs=1)
    with pytest.raises(ImageTextError) as info:
        list(cfg.build())
    msg = str(info.value)
    assert "\n" not in msg and one_line(info.value) == msg
    assert str(shard) in msg, msg
    for text in must_name:
        assert text in msg, f"{text!r} not in {msg!r}"


def test_skip_bad_reads_the_good_members_and_logs_each_bad_one(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    shards = [BAD[k][0](tmp_path / f"bad-{i:06d}.tar") for i, k in enumerate(["corrupt jpg", "missing caption",
                                                                           "empty caption", "truncated tar"])]
    cfg = ImageTextConfig(shards=tuple(map(str, shards)), image_size=(8, 8), batch_size=4, shuffle_buffer=1, epochs=1,
                          skip_bad=True)
    stream = cfg.build()
    with caplog.at_level(logging.WARNING, logger="openlbm.data.imagetext"):
        keys = _keys(stream)
    # a truncated tar loses the rest of the shard from the sample being read (000001, whose group was still open)
    assert Counter(keys) == Counter({"000000": 4, "000002": 3})
    assert stream.bad == 4
    skipped = [r.getMessage() for r in caplog.records if "skipping bad" in r.getMessage()]
    assert len(skipped) == 4 and all("bad-0000" in m for m in skipped)
    assert any("skipped 4 bad member(s)" in r.getMessage() for r in caplog.records)


def test_all_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    shard = _tar(tmp_path / "bad.tar", [{"__key__": "000000", "txt": b"only text"}])
    with pytest.raises(ImageTextError, match="no readable image-text sample"):
        next(iter(ImageTextConfig(shards=(str(shard),), skip_bad=True).build()))


def test_shard_patterns_that_match_nothing_are_named(tmp_path: Path) -> None:
    _write(tmp_path / "s", n_shards=2, per_shard=1)
    assert len(expand_shards([str(tmp_path / "s"), str(tmp_path / "s/*.tar")])) == 2  # duplicates dropped
    with pytest.raises(ValueError, match="nope-000000.tar does not exist"):
        expand_shards([str(tmp_path / "nope-{000000..000001}.tar")])
    with pytest.raises(ValueError, match="match no file"):
        expand_shards([str(tmp_path / "s/*.tgz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="match no file"):
        ImageTextConfig(shards=(str(tmp_path / "empty"),)).build()
    with pytest.raises(ValueError, match="non-empty list"):
        ImageTextConfig(shards=str(tmp_path / "s"))  # type: ignore[arg-type]
