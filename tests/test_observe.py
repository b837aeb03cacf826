"""Chapter 1's measurements (helpers.observe) and figures (helpers.plotting additions): right numbers on known input,
figures returned, clear errors on bad input."""
from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import helpers  # noqa: E402
from helpers import observe, plotting  # noqa: E402
from helpers.shapes import ShapesPipeline  # noqa: E402

PROMPTS = ["a big red circle on the left on a blue background", "a small green square at the top on a red background",
           "a big white triangle in the center on a black background"]
STEPS = 3


@pytest.fixture(scope="module")
def pipe(make_tiny_pipe) -> ShapesPipeline:
    return make_tiny_pipe(text_width=32, text_layers=1)


@pytest.fixture(scope="module")
def recorded(pipe):
    return observe.record_generation(pipe, PROMPTS, seed=0, num_inference_steps=STEPS, keep_tokens={"steps": [1]})


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def planted(steps=4, blocks=3, rows=5, channels=16, massive=7, seed=0) -> torch.Tensor:
    """A (steps, blocks, rows, channels) mean tensor with one channel far above the rest everywhere."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(steps, blocks, rows, channels, generator=g) * 0.1 + 0.01
    mean[..., massive] = 5.0
    return mean


# --- measurements -------------------------------------------------------------------------------------------------

def test_record_generation_is_deterministic_and_returns_images(pipe, recorded):
    rec, images = recorded
    assert images.shape == (len(PROMPTS), 32, 32, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert rec.mean.shape == (STEPS, 2, len(PROMPTS), 32)
    assert set(rec.tokens) == {(1, 0), (1, 1)}
    rec2, images2 = observe.record_generation(pipe, PROMPTS, seed=0, num_inference_steps=STEPS)
    assert np.array_equal(images, images2) and torch.equal(rec.mean, rec2.mean)
    _, other = observe.record_generation(pipe, PROMPTS, seed=1, num_inference_steps=STEPS)
    assert not np.allclose(images, other)


def test_record_generation_takes_prompt_embeds(pipe):
    emb, pooled = pipe.encode_prompt(PROMPTS[:2])
    rec, images = observe.record_generation(pipe, None, num_inference_steps=2, prompt_embeds=emb,
                                            pooled_prompt_embeds=pooled)
    assert images.shape[0] == 2 and rec.mean.shape[:3] == (2, 2, 2)


def test_record_generation_rejects_bad_input(pipe):
    with pytest.raises(ValueError, match="prompts"):
        observe.record_generation(pipe, None)
    with pytest.raises(TypeError, match="seed"):
        observe.record_generation(pipe, PROMPTS, seed=1.5)


def test_block_labels():
    assert observe.block_labels(["transformer_blocks.2", "single_transformer_blocks.0", "other.1"]) == \
        ["block 2", "single 0", "other.1"]


def test_block_summary_finds_the_planted_channel():
    stat = helpers.channel_statistic(planted())
    table = observe.block_summary(stat, ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0"])
    assert list(table.index) == ["block 0", "block 1", "single 0"]
    assert (table["top1"] == 7).all()
    assert np.allclose(table["ratio1"], table["value1"] / table["median"])
    assert (table["ratio1"] > 30).all() and (table["ratio2"] < 3).all()
    with pytest.raises(ValueError, match="block names"):
        observe.block_summary(stat, ["a"])
    with pytest.raises(ValueError, match="channel_statistic"):
        observe.block_summary(torch.ones(3, dtype=torch.long))


def test_top1_agreement_and_mean_overlap():
    assert observe.top1_agreement(torch.tensor([3, 3, 5, 3])) == (3, 0.75)
    with pytest.raises(ValueError):
        observe.top1_agreement(torch.tensor([]))
    j = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.25], [0.0, 0.25, 1.0]])
    assert math.isclose(observe.mean_overlap(j), 0.25)
    with pytest.raises(ValueError, match="square"):
        observe.mean_overlap(torch.ones(2, 3))


def test_chance_overlap():
    assert math.isclose(observe.chance_overlap(1, 128), 1 / 128)
    assert observe.chance_overlap(128, 128) == 1.0
    # Monte Carlo check of the exact formula
    g = torch.Generator().manual_seed(0)
    sets = torch.stack([torch.randperm(32, generator=g)[:4] for _ in range(2000)])
    j = helpers.persistence(sets)
    mc = observe.mean_overlap(j)
    assert abs(mc - observe.chance_overlap(4, 32)) < 0.01
    with pytest.raises(ValueError, match="k must be"):
        observe.chance_overlap(0, 10)


def test_persistence_of_a_planted_channel_is_complete():
    mean = planted()
    summary = observe.persistence_summary(mean, k=1, step=2, block_names=["a.0", "a.1", "a.2"])
    assert (summary["steps_top1"] == 7).all() and (summary["prompts_top1"] == 7).all()
    assert np.allclose(summary[["steps_jaccard", "prompts_jaccard", "steps_top1_share", "prompts_top1_share"]], 1)
    mats = observe.overlap_matrices(mean, k=1, step=2, block=1)
    assert {k: tuple(v.shape) for k, v in mats.items()} == {"blocks": (3, 3), "steps": (4, 4), "prompts": (5, 5)}
    assert all(torch.allclose(m, torch.ones_like(m)) for m in mats.values())
    with pytest.raises(IndexError, match="step"):
        observe.overlap_matrices(mean, k=1, step=9, block=0)
    with pytest.raises(IndexError, match="block"):
        observe.overlap_matrices(mean, k=1, step=0, block=3)


def test_persistence_drops_when_channels_move():
    mean = planted(massive=7)
    mean[2:, ..., 7] = 0.0
    mean[2:, ..., 3] = 5.0  # the massive channel changes half-way through the trajectory
    summary = observe.persistence_summary(mean, k=1, step=0)
    assert np.allclose(summary["steps_top1_share"], 0.5)
    assert np.allclose(summary["steps_jaccard"], 1 / 3)  # 2 of the 6 pairs of steps share their top-1


def test_ratio_by_step_and_frequency(recorded):
    rec, _ = recorded
    r = observe.ratio_by_step(rec)
    assert r.shape == (STEPS, 2) and (r >= 1).all()
    f = observe.frequency_by_block(planted(), k=2)
    assert f.shape == (3, 16) and torch.allclose(f[:, 7], torch.ones(3))
    assert torch.allclose(f.sum(1), torch.full((3,), 2.0))


def test_token_magnitudes_and_grid(recorded):
    rec, _ = recorded
    x = observe.token_magnitudes(rec, step=1, block=0, prompt=2)
    assert x.shape == (64, 32) and (x >= 0).all()
    assert np.allclose(x, rec.tokens[1, 0][2].abs().numpy())
    with pytest.raises(KeyError, match="keep_tokens"):
        observe.token_magnitudes(rec, step=0, block=0, prompt=0)
    with pytest.raises(IndexError, match="prompt"):
        observe.token_magnitudes(rec, step=1, block=0, prompt=3)
    grid = observe.token_grid(np.arange(64))
    assert grid.shape == (8, 8) and grid[1, 0] == 8  # raster order
    assert observe.token_grid(np.arange(6), shape=(2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="shape="):
        observe.token_grid(np.arange(6))


def test_interactive_session_is_off_when_unattended(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("FEW_CHANNELS_WIDGETS", raising=False)
    assert not observe.interactive_session()
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/01_observing.ipynb")
    assert observe.interactive_session()
    monkeypatch.setenv("FEW_CHANNELS_WIDGETS", "0")
    assert not observe.interactive_session()


def test_explore_builds_a_widget_only_when_asked(recorded, monkeypatch):
    rec, images = recorded
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("FEW_CHANNELS_WIDGETS", raising=False)
    assert observe.explore(rec, images, PROMPTS) is None
    import ipywidgets
    widget = observe.explore(rec, images, PROMPTS, force=True)
    assert isinstance(widget, ipywidgets.VBox)
    with pytest.raises(ValueError, match="rows"):
        observe.explore(rec, images[:2], PROMPTS[:2], force=True)


# --- figures ------------------------------------------------------------------------------------------------------

def test_figures_are_returned(recorded):
    rec, images = recorded
    stat = helpers.channel_statistic(rec, steps=[1])
    names = rec.block_names
    mats = observe.overlap_matrices(rec, k=2, step=1, block=0)
    figs = [
        plotting.top_vs_median(stat, names),
        plotting.block_channel_map(stat, names),
        plotting.token_channel_view(rec.tokens[1, 0][0], images[0], channel=3, title="t"),
        plotting.overlap_maps({"blocks": mats["blocks"], "steps": mats["steps"], "prompts": mats["prompts"]},
                              tick_labels={"blocks": observe.block_labels(names)}),
        plotting.channel_frequency_map(observe.frequency_by_block(rec, 2), names, max_channels=5),
        plotting.ratio_over_steps(observe.ratio_by_step(rec), rec.timesteps, names, mark_step=1),
        plotting.channel_profile(stat[0], images[0], title="block 0", caption=PROMPTS[0]),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert len(figs[2].axes) == 5  # heatmap, image, spatial map and two colour bars
    assert figs[0].axes[0].get_yscale() == "log"
    assert [t.get_text() for t in figs[4].axes[0].get_xticklabels()][:1] != []


def test_figures_reject_bad_input():
    with pytest.raises(ValueError, match="stat"):
        plotting.top_vs_median(torch.ones(5))
    with pytest.raises(ValueError, match="ranks"):
        plotting.top_vs_median(torch.ones(2, 4), ranks=5)
    with pytest.raises(ValueError, match="block names"):
        plotting.block_channel_map(torch.ones(2, 4), ["transformer_blocks.0"])
    with pytest.raises(IndexError, match="channel"):
        plotting.token_channel_view(np.ones((64, 8)), np.zeros((32, 32, 3)), channel=8)
    with pytest.raises(ValueError, match="square grid"):
        plotting.token_channel_view(np.ones((10, 8)), np.zeros((32, 32, 3)), channel=1)
    with pytest.raises(ValueError, match="square"):
        plotting.overlap_maps({"x": np.ones((2, 3))})
    with pytest.raises(ValueError, match="at least one"):
        plotting.overlap_maps({})
    with pytest.raises(ValueError, match="max_channels"):
        plotting.channel_frequency_map(np.ones((2, 4)), max_channels=0)
    with pytest.raises(ValueError, match="timesteps"):
        plotting.ratio_over_steps(np.ones((3, 2)), timesteps=[1.0, 0.5])
    with pytest.raises(ValueError, match="profile"):
        plotting.channel_profile(np.ones((2, 2)), np.zeros((4, 4, 3)))


def test_profile_view(recorded):
    rec, images = recorded
    fig = observe.profile_view(rec, images, PROMPTS, block=1, step=2, prompt=1)
    assert isinstance(fig, matplotlib.figure.Figure) and "single 0" in fig.axes[0].get_title()
    with pytest.raises(IndexError, match="step"):
        observe.profile_view(rec, images, PROMPTS, block=0, step=STEPS, prompt=0)


def test_overlap_maps_checks_tick_labels():
    with pytest.raises(ValueError, match="tick labels"):
        plotting.overlap_maps({"x": np.eye(3)}, tick_labels={"x": ["a", "b"]})
    fig = plotting.overlap_maps({"x": np.eye(3)}, tick_labels={"x": ["a", "b", "c"]})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
