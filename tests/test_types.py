"""The one image-layout conversion of the data contract (channel-last sources -> channel-first tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openlbm.types import EnvFrame, ImageTextBatch, chw_from_hwc, hwc_from_chw, observation_from_frames


def test_chw_from_hwc_moves_channels_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    for shape in [(4, 5, 3), (2, 4, 5, 3), (3, 2, 4, 5, 3)]:  # a frame, a window, a batch of windows
        hwc = rng.integers(0, 256, shape, dtype=np.uint8)
        chw = chw_from_hwc(hwc)
        assert chw.shape == (*shape[:-3], 3, 4, 5) and chw.dtype == torch.uint8 and chw.is_contiguous()
        assert int(chw[..., 1, 2, 3].flatten()[0]) == int(hwc[..., 2, 3, 1].flatten()[0])
        np.testing.assert_array_equal(hwc_from_chw(chw), hwc)
    with pytest.raises(ValueError, match=r"channel-last images \[..., Hi, Wi, 3\], got shape \[3, 4, 5\]"):
        chw_from_hwc(np.zeros((3, 4, 5), np.uint8))


def test_observation_from_frames_uses_it() -> None:
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    obs = observation_from_frames([EnvFrame({"cam": img}, np.zeros(2, np.float32), "x")], "e")
    torch.testing.assert_close(obs.images["cam"][0, 0], chw_from_hwc(img))


def test_image_text_batch_validate_names_the_field() -> None:
    ok = ImageTextBatch(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), ["a", "b"], {"shard": ["s", "s"], "key": ["0", "1"]})
    ok.validate()
    assert ok.batch_size == 2 and ok.to("cpu").text == ["a", "b"]
    bad = {
        "images": ImageTextBatch(torch.zeros(2, 4, 5, 3, dtype=torch.uint8), ["a", "b"]),
        "text": ImageTextBatch(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), ["a", " "]),
        "meta": ImageTextBatch(torch.zeros(2, 3, 4, 5, dtype=torch.uint8), ["a", "b"], {"key": ["0"]}),
    }
    for field, batch in bad.items():
        with pytest.raises(ValueError, match=field):
            batch.validate()
