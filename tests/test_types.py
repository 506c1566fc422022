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


def test_batch_latent_action_fields_are_validated() -> None:
    from openlbm.types import Batch, Observation

    obs = Observation(images={"cam": torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8)}, state=torch.zeros(2, 1, 0),
                      instruction=["a", "b"], embodiment=["video", "video"])
    pad = torch.ones(2, 5, dtype=torch.bool)
    batch = Batch(obs, torch.zeros(2, 5, 0), pad, torch.zeros(2, 0, dtype=torch.bool))
    batch.validate()  # no latent labels: both None
    assert batch.latent_action is None and batch.to("cpu").latent_is_pad is None
    batch.latent_action, batch.latent_is_pad = torch.zeros(2, 5, 3), pad.clone()
    batch.validate()
    assert batch.to("cpu").latent_action.shape == (2, 5, 3)
    for lat, lpad, msg in ((torch.zeros(2, 4, 3), pad, r"latent_action must be float32 \[B=2, H=5, L\]"),
                           (torch.zeros(2, 5, 3, dtype=torch.float64), pad, "latent_action must be float32"),
                           (torch.zeros(2, 5, 3), pad.float(), "latent_is_pad must be bool"),
                           (torch.full((2, 5, 3), float("nan")), pad, "latent_action contains NaN"),
                           (torch.zeros(2, 5, 3), None, "given together")):
        batch.latent_action, batch.latent_is_pad = lat, lpad
        with pytest.raises(ValueError, match=msg):
            batch.validate()
