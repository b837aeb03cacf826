"""The one foreground mask (chapter 3's ``foreground_mask``, exported to helpers.chapters) and the token <-> pixel
masks and IoU of helpers.masks that chapters 3, 4 and 5 score it with."""
import numpy as np
import pytest
import torch

import helpers.chapters
from helpers.masks import grid, iou, pixels_to_tokens, token_to_pixels
from helpers.shapes.pipeline import pack

#: Chapter 3's export; the tests of it wait while the chapter is re-exported without it.
foreground_mask = getattr(helpers.chapters, "foreground_mask", None)
exported = pytest.mark.skipif(foreground_mask is None, reason="helpers.chapters has no foreground_mask (chapter 3)")


def object_tokens(box=(2, 5, 3, 6), channels=6, signal=(0,), seed=0, strength=10.0):
    """Tokens (64, channels) of one 8x8 image: noise, plus a large value in the ``signal`` channels inside the box
    (rows r0:r1, cols c0:c1). Returns the tokens and the box's token mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((8, 8), bool)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = True
    x = rng.normal(size=(64, channels))
    x[mask.ravel()[:, None] & np.isin(np.arange(channels), signal)[None]] += strength
    return torch.tensor(x, dtype=torch.float32), mask.ravel()


@exported
def test_foreground_mask_finds_the_object_in_its_channels_and_is_deterministic():
    x, truth = object_tokens()
    fg = foreground_mask(x, channels=[0])
    assert fg.dtype == torch.bool and fg.shape == (64,)
    assert np.array_equal(fg.numpy(), truth)
    assert torch.equal(fg, foreground_mask(x, channels=[0]))
    noise_only = foreground_mask(x, channels=[1, 2, 3])  # the object is not in these channels
    assert iou(noise_only.reshape(8, 8), truth.reshape(8, 8)) < 0.5


@exported
def test_the_foreground_is_the_cluster_off_the_border_even_when_it_is_larger():
    x, truth = object_tokens(box=(1, 7, 1, 7))  # 36 of 64 tokens, none on the border
    assert np.array_equal(foreground_mask(x, channels=[0]).numpy(), truth)
    x, truth = object_tokens(box=(0, 3, 0, 3))  # a corner object touches the border: fewer border tokens wins
    assert np.array_equal(foreground_mask(x, channels=[0]).numpy(), truth)


def test_grid_and_token_to_pixels_follow_the_pipeline_packing_order():
    assert grid(64) == (8, 8) and grid(4096) == (64, 64)
    with pytest.raises(ValueError, match="square grid"):
        grid(32)
    # A 32x32 image whose 4x4 patch (r, c) holds r * 8 + c: packed, token i holds i.
    image = torch.arange(64.0).reshape(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    tokens = pack(image.expand(1, 3, 32, 32))[0, :, 0]
    assert torch.equal(tokens, torch.arange(64.0))
    for i in (0, 9, 63):
        pixels = token_to_pixels(torch.arange(64) == i, 4)
        assert pixels.shape == (32, 32) and pixels.sum() == 16 and (image.numpy()[pixels] == i).all()
    assert token_to_pixels(np.ones((2, 64), bool), 4).shape == (2, 32, 32)
    with pytest.raises(ValueError, match="patch must be a positive integer"):
        token_to_pixels(np.ones(64, bool), 0)


def test_pixels_to_tokens_is_a_majority_and_inverts_upsampling():
    rng = np.random.default_rng(1)
    tokens = rng.random((3, 8, 8)) > 0.5
    assert np.array_equal(pixels_to_tokens(token_to_pixels(tokens, 4), 4), tokens)
    pixels = np.zeros((32, 32), bool)
    pixels[:2, :4] = True   # half of patch (0, 0): in
    pixels[4, 4:8] = True   # a quarter of patch (1, 1): out
    out = pixels_to_tokens(pixels, 4)
    assert out[0, 0] and not out[1, 1] and out.sum() == 1
    with pytest.raises(ValueError, match="does not split into 3x3 patches"):
        pixels_to_tokens(pixels, 3)


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0 and iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0  # both empty: agree
    np.testing.assert_allclose(iou(np.stack([a, b]), b), [4 / 12, 1.0])  # leading axes broadcast
    with pytest.raises(ValueError, match="different sizes"):
        iou(a, np.zeros((8, 8), bool))
