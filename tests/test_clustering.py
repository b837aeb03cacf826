"""helpers.clustering: K-means token masks, the foreground rules, token <-> pixel masks, IoU and the measurement."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import helpers
from helpers import clustering as cl
from helpers.shapes import pack, render, sample_scenes


def object_tokens(grid=(8, 8), box=(2, 5, 3, 6), channels=6, signal=(0,), seed=0, strength=10.0):
    """Tokens (N, channels) of one image: noise everywhere, plus a large value in the ``signal`` channels inside the
    box (rows r0:r1, cols c0:c1). Returns the tokens and the box's token mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(grid, bool)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = True
    x = rng.normal(size=(grid[0] * grid[1], channels))
    x[mask.ravel()[:, None] & np.isin(np.arange(channels), signal)[None]] += strength
    return x.astype(np.float32), mask


# ----------------------------------------------------------------------------------------------- grids

def test_grid_is_inferred_from_the_token_count():
    assert cl.grid_shape(64) == (8, 8)
    assert cl.grid_shape(4096) == (64, 64)  # FLUX at 1024x1024
    assert cl.grid_shape(32, grid=(4, 8)) == (4, 8)
    with pytest.raises(ValueError, match="square grid"):
        cl.grid_shape(32)
    with pytest.raises(ValueError, match="cells"):
        cl.grid_shape(64, grid=(4, 8))


def test_border_is_the_outer_ring():
    ring = cl.border((8, 8))
    assert ring.sum() == 28 and ring[0].all() and ring[:, -1].all() and not ring[1:-1, 1:-1].any()


def test_restrict_checks_channels():
    x = np.arange(24).reshape(2, 3, 4)
    assert cl.restrict(x, [3, 0]).tolist() == x[..., [3, 0]].tolist()
    assert cl.restrict(torch.as_tensor(x), None).shape == (2, 3, 4)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        cl.restrict(x, [4])
    with pytest.raises(ValueError, match="empty"):
        cl.restrict(x, [])


# ----------------------------------------------------------------------------------------------- clustering

def test_kmeans_finds_the_object_in_its_channel_and_is_deterministic():
    x, truth = object_tokens()
    labels = cl.cluster_tokens(x[:, :1])
    assert np.array_equal(labels, cl.cluster_tokens(x[:, :1]))
    fg = labels.reshape(8, 8) == labels.reshape(8, 8)[truth][0]
    assert np.array_equal(fg, truth)


def test_cluster_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, channels\)"):
        cl.cluster_tokens(np.zeros((2, 64, 4)))
    with pytest.raises(ValueError, match="k must be"):
        cl.cluster_tokens(np.zeros((64, 4)), k=1)
    bad = np.zeros((64, 4))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cl.cluster_tokens(bad)


def test_identical_tokens_give_one_cluster_without_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = cl.cluster_tokens(np.ones((64, 3)))
    assert len(np.unique(labels)) == 1


def test_border_rule_picks_the_cluster_off_the_border_even_when_it_is_larger():
    labels = np.zeros((8, 8), int)
    labels[1:7, 1:7] = 1  # 36 interior tokens vs 28 on the ring: larger, but it never touches the border
    assert cl.pick_foreground(labels, (8, 8), "border") == 1
    assert cl.pick_foreground(labels, (8, 8), "smaller") == 0


def test_rules_break_ties_with_the_other_criterion():
    labels = np.zeros((8, 8), int)
    labels[:, :4] = 1  # two halves: same size, same border count -> lowest label
    assert cl.pick_foreground(labels, (8, 8), "border") == 0
    labels = np.zeros((8, 8), int)
    labels[0, :4] = 1
    labels[2:6, 2:6] = 1  # cluster 1: 20 tokens, 4 on the border; cluster 0: 44 tokens, 24 on the border
    assert cl.pick_foreground(labels, (8, 8), "border") == 1
    with pytest.raises(ValueError, match="rule must be"):
        cl.pick_foreground(labels, (8, 8), "biggest")


def test_foreground_mask_depends_on_the_channels():
    x, truth = object_tokens(signal=(0, 1))
    assert np.array_equal(cl.foreground_mask(x, channels=[0, 1]), truth)
    noise_only = cl.foreground_mask(x, channels=[4, 5])
    assert cl.iou(noise_only, truth) < 0.5
    batch = np.stack([x, object_tokens(box=(0, 3, 0, 3), seed=1, signal=(0, 1))[0]])
    masks = cl.token_masks(batch, channels=[0, 1])
    assert masks.shape == (2, 8, 8) and np.array_equal(masks[0], truth)


# ----------------------------------------------------------------------------------------------- token <-> pixels

def test_token_mask_upsampling_follows_the_pipeline_packing_order():
    """Token i of ``pack`` is the patch that token i of the mask covers after upsampling."""
    tokens = np.arange(64).reshape(8, 8)
    image = torch.as_tensor(tokens.repeat(4, 0).repeat(4, 1), dtype=torch.float32)  # each patch holds its index
    packed = pack(image.expand(1, 3, 32, 32))  # (1, 64, 48)
    assert torch.equal(packed[0].amin(1), torch.arange(64, dtype=torch.float32))
    mask = np.zeros((8, 8), bool)
    mask.flat[[5, 17, 40]] = True
    pixels = cl.token_mask_to_pixels(mask, patch=4)
    assert pixels.shape == (32, 32) and pixels.sum() == 3 * 16
    assert set(np.unique(image.numpy()[pixels])) == {5, 17, 40}


def test_pixels_to_tokens_is_a_majority_and_inverts_upsampling():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 8, 8)) < 0.4
    assert np.array_equal(cl.pixels_to_token_mask(cl.token_mask_to_pixels(mask, 4), 4), mask)
    pixels = np.zeros((8, 8), bool)
    pixels[:2, :4] = True  # half of token (0, 0) of a 4x4 patch, a quarter of none else
    pixels[4, 4] = True  # one pixel of token (1, 1)
    assert cl.pixels_to_token_mask(pixels, 4).tolist() == [[True, False], [False, False]]
    with pytest.raises(ValueError, match="patches"):
        cl.token_coverage(np.zeros((30, 32)), 4)
    with pytest.raises(ValueError, match="patch"):
        cl.token_mask_to_pixels(mask, 0)


def test_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert cl.iou(a, b) == pytest.approx(4 / 12)
    assert cl.iou(a, a) == 1.0 and cl.iou(a, ~a) == 0.0
    assert cl.iou(b & ~b, a & ~a) == 1.0  # both empty
    assert np.allclose(cl.iou(np.stack([a, a]), np.stack([b, a])), [1 / 3, 1])
    assert np.allclose(cl.iou(a, np.stack([b, a])), [1 / 3, 1])  # one mask against many
    with pytest.raises(ValueError, match="different sizes"):
        cl.iou(a, np.zeros((8, 8), bool))


def test_centred_blob():
    blob = cl.centred_blob((8, 8), 0.25)
    assert blob.sum() == 16 and blob[3:5, 3:5].all() and not cl.border((8, 8))[blob].any()
    assert cl.centred_blob((8, 8), 0).sum() == 0


# ----------------------------------------------------------------------------------------------- measurement

def test_clustering_iou_scores_each_step_block_and_image():
    xs, truths = zip(*(object_tokens(box=b, seed=i, channels=4, signal=(1,))
                       for i, b in enumerate([(2, 5, 3, 6), (0, 3, 0, 4), (4, 8, 4, 8)])))
    x = torch.as_tensor(np.stack(xs))
    truth = cl.token_mask_to_pixels(np.stack(truths), 4)
    tokens = {(0, 0): x, (0, 1): x, (3, 0): x}
    channels = torch.tensor([[1], [2]])  # block 0: the object channel; block 1: a noise channel
    table = cl.clustering_iou(tokens, truth, channels=channels)
    assert len(table) == 9 and set(table.columns) >= {"step", "block", "image", "iou", "iou_best", "rule_right",
                                                      "token_iou", "area"}
    good = table[table.block == 0]
    assert np.allclose(good.iou, 1) and np.allclose(good.token_iou, 1) and good.rule_right.all()
    assert table[table.block == 1].iou_best.mean() < 0.6
    assert (table.iou <= table.iou_best + 1e-12).all()
    grid = cl.iou_map(table)
    assert grid.shape == (2, 2) and np.isnan(grid.loc[1, 3])
    same = cl.clustering_iou(x, np.stack(truths), channels=[1])  # one tensor, truth at the token grid
    assert np.allclose(same.iou, 1)


def test_clustering_iou_rejects_mismatched_truth():
    x, truth = object_tokens()
    with pytest.raises(ValueError, match="rows="):
        cl.clustering_iou(torch.as_tensor(np.stack([x, x])), truth[None])
    with pytest.raises(ValueError, match="token grid"):
        cl.clustering_iou(x[None], np.zeros((1, 30, 30), bool))
    assert len(cl.clustering_iou(np.stack([x, x]), cl.token_mask_to_pixels(truth[None]), rows=[1])) == 1


def test_grid_inferred_for_flux_sized_token_counts():
    x, truth = object_tokens(grid=(64, 64), box=(10, 40, 20, 50), channels=3)
    table = cl.clustering_iou(x[None], cl.token_mask_to_pixels(truth[None], 2))  # 128x128 pixels, 2x2 patches
    assert table.iou.item() == pytest.approx(1.0)


def test_mean_ci():
    m, lo, hi = cl.mean_ci([0.0, 1.0] * 50)
    assert m == 0.5 and lo < 0.5 < hi and hi - lo < 0.25
    assert cl.format_mean_ci([0.2, 0.4]).startswith("0.300 [")
    with pytest.raises(ValueError):
        cl.mean_ci([1.0])


def test_colour_truth_is_the_object_mask_on_clean_renders():
    scenes = sample_scenes(40, seed=7)
    truth = cl.colour_truth(render(scenes), [s.caption for s in scenes])
    exact = np.stack([s.mask for s in scenes])
    assert np.array_equal(truth, exact)
    with pytest.raises(ValueError, match="captions"):
        cl.colour_truth(render(scenes), [scenes[0].caption])


# ----------------------------------------------------------------------------------------------- on a pipeline

def test_recorded_tokens_and_inputs_of_a_pipeline(tiny_pipe):
    prompts = ["a big red circle on the left on a blue background", "a small white square at the top on a black "
               "background"]
    images, rec, inp = cl.generate_with_tokens(tiny_pipe, prompts, blocks=[1], steps=[0, 2], seed=0,
                                               keep_inputs=True, num_inference_steps=3)
    assert images.shape == (2, 32, 32, 3) and sorted(rec.tokens) == [(0, 1), (2, 1)]
    assert sorted(inp.inputs) == [0, 2] and inp.inputs[0].shape == (2, 64, 48)
    noise = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inp.inputs[0], pack(noise))  # step 0 sees the initial noise
    truth = np.zeros((2, 32, 32), bool)
    truth[:, 8:20, 4:16] = True
    stat = helpers.channel_statistic(rec)
    table = cl.clustering_iou(rec.tokens, truth, channels=helpers.top_k(stat, 2))
    assert len(table) == 2 * 2 and table.iou.between(0, 1).all() and set(table.block) == {1}
    assert len(cl.clustering_iou(inp.inputs, truth)) == 4
    assert tiny_pipe.transformer._forward_pre_hooks == {}  # hooks removed


def test_tokens_of_noised_renders(tiny_pipe):
    scenes = sample_scenes(3, seed=1)
    tokens = cl.tokens_of_noised_renders(tiny_pipe, scenes, sigma=0.5, blocks=[0])
    assert list(tokens) == [(0, 0)] and tokens[0, 0].shape == (3, 64, 32)
    again = cl.tokens_of_noised_renders(tiny_pipe, scenes, sigma=0.5, blocks=[0])
    assert torch.equal(tokens[0, 0], again[0, 0])


def test_figures_return_figures():
    import matplotlib.pyplot as plt

    x, truth = object_tokens()
    table = cl.clustering_iou({(0, 0): x[None], (1, 0): x[None]}, cl.token_mask_to_pixels(truth[None]))
    images = np.zeros((2, 32, 32, 3))
    masks = np.stack([cl.token_mask_to_pixels(truth)] * 2)
    curves = {"a": table.groupby("step").iou.mean(), "b": table.groupby("step").area.mean()}
    for fig in (cl.iou_map_figure(table, values=("iou", "rule_right"), block_names=["block 0"]),
                cl.iou_bars_figure({"a": [0.1, 0.5], "b": [1, 0.9]}, ceiling=0.8),
                cl.iou_curves_figure(curves, ceiling=0.7),
                cl.masks_figure(images, masks, truth=masks, titles=["x", "y"]), cl.masks_figure(images, masks)):
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
    assert cl.overlap_image(masks[0], ~masks[0])[masks[0]].tolist()[0] == pytest.approx([0.95, 0.55, 0.1])
