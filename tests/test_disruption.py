"""Tests for helpers.disruption: selections, the disruption table, the shapes score and the figures."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from helpers.disruption import (block_conditions, block_labels, calibration_statistic, collapse_sentence,
                                collapse_summary, condition_grid, condition_map, condition_set, control_selections,
                                disruption_table, generate_images, pixel_change, plot_accuracy_vs_k, plot_map,
                                shapes_score, step_conditions, step_ranges, summarise_sets)
from helpers.shapes import HELD_OUT, render, sample_scenes

PROMPTS = [s.caption for s in sample_scenes(3, seed=5, exclude=HELD_OUT)]
STEPS = 2


@pytest.fixture(scope="module")
def stat(tiny_pipe):
    return calibration_statistic(tiny_pipe, PROMPTS[:2], seed=1, num_inference_steps=STEPS)


def test_calibration_statistic_is_per_block_and_channel(tiny_pipe, stat):
    assert stat.shape == (2, 32)
    assert (stat >= 0).all() and stat.max() > 0
    with helpers.record(tiny_pipe) as rec:
        tiny_pipe(prompt=PROMPTS[:2], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(1),
             output_type="latent")
    torch.testing.assert_close(stat, helpers.channel_statistic(rec))


def test_block_labels(tiny_pipe):
    assert block_labels(tiny_pipe) == ["double 0", "single 0"]


def test_control_selections(stat):
    sel = control_selections(stat, ks=[1, 4], n_random=2)
    assert list(sel) == ["top-1", "bottom-1", "random-1#0", "random-1#1", "top-4", "bottom-4", "random-4#0",
                         "random-4#1"]
    assert sel["top-4"].shape == sel["random-4#1"].shape == (2, 4)
    for b in range(2):
        assert stat[b, sel["top-1"][b, 0]] == stat[b].max()
        assert stat[b, sel["bottom-1"][b, 0]] == stat[b].min()
        assert not set(sel["random-4#0"][b].tolist()) & set(sel["top-4"][b].tolist())
    assert not torch.equal(sel["random-4#0"], sel["random-4#1"])
    with pytest.raises(ValueError, match="ks is empty"):
        control_selections(stat, ks=[])


def test_step_ranges_partition_the_steps():
    ranges = step_ranges(20)
    assert list(ranges) == ["early", "middle", "late"]
    assert sum(ranges.values(), []) == list(range(20))
    assert ranges["early"][0] == 0 and ranges["late"][-1] == 19
    with pytest.raises(ValueError, match="cannot split 2 steps"):
        step_ranges(2)
    cond = step_conditions(torch.tensor([[0], [1]]), ranges, "top-1")
    assert cond["top-1 @late"]["steps"] == ranges["late"]
    assert block_conditions(torch.tensor([[0], [1]]), [1], "top-1")["top-1 @b1"]["blocks"] == [1]


def test_condition_set():
    assert [condition_set(n) for n in ("top-4", "random-2#1", "bottom-8 @b3", "baseline", "top-1 @early")] == \
        ["top", "random", "bottom", "baseline", "top"]


def test_pixel_change():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = a.copy()
    b[1] = 1
    np.testing.assert_allclose(pixel_change(b, a), [0, 1])
    with pytest.raises(ValueError, match="same shape"):
        pixel_change(a[:1], a)


def test_disruption_table_tiny(tiny_pipe, stat):
    sel = {"top-2": helpers.top_k(stat, 2), "every": torch.arange(32),
           "one block": {"channels": torch.arange(32), "blocks": [1], "steps": [0, 1]},
           "identity": {"channels": torch.arange(32), "mode": "scale", "scale": 1.0}}
    table, images = disruption_table(tiny_pipe, PROMPTS, sel, seed=3, return_images=True, num_inference_steps=STEPS)
    assert list(table.index) == ["baseline", *sel]
    assert table.loc["baseline", "pixel_change"] == 0 and table.loc["identity", "pixel_change"] == 0
    assert table.loc["every", "pixel_change"] > 0.01
    assert table.loc["top-2", "k"] == 2 and table.loc["every", "k"] == 32
    assert table.loc["one block", "blocks"] == "1" and table.loc["one block", "steps"] == "0,1"
    assert table.loc["top-2", "blocks"] == "all" and table.loc["top-2", "set"] == "top"
    assert images["every"].shape == (3, 32, 32, 3) and set(images) == {"baseline", *sel}
    np.testing.assert_array_equal(images["baseline"], generate_images(tiny_pipe, PROMPTS, 3, num_inference_steps=STEPS))
    again = disruption_table(tiny_pipe, PROMPTS, {"every": torch.arange(32)}, seed=3, reference=images["baseline"],
                             num_inference_steps=STEPS)
    assert again.loc["every", "pixel_change"] == pytest.approx(table.loc["every", "pixel_change"])
    assert "all" not in table  # no score function, no accuracy


def test_disruption_table_errors(tiny_pipe):
    with pytest.raises(ValueError, match="selections is empty"):
        disruption_table(tiny_pipe, PROMPTS, {})
    with pytest.raises(ValueError, match="reserved"):
        disruption_table(tiny_pipe, PROMPTS, {"baseline": torch.tensor([0])})
    with pytest.raises(ValueError, match="unknown condition keys"):
        disruption_table(tiny_pipe, PROMPTS, {"x": {"channels": [0], "block": [1]}})
    with pytest.raises(ValueError, match="needs 'channels'"):
        disruption_table(tiny_pipe, PROMPTS, {"x": {"blocks": [1]}})
    with pytest.raises(TypeError, match="channel indices or a dict"):
        disruption_table(tiny_pipe, PROMPTS, {"x": 3})
    with pytest.raises(ValueError, match="column 'all'"):
        disruption_table(tiny_pipe, PROMPTS[:1], {"x": [0]}, score_fn=lambda ims, p: pd.DataFrame({"a": [True]}),
                         num_inference_steps=1)


def test_shapes_score_reads_clean_renders():
    scenes = sample_scenes(20, seed=9, jitter=False)
    right = shapes_score(render(scenes), [s.caption for s in scenes])
    assert list(right.columns) == ["size", "colour", "shape", "position", "background", "all"]
    assert right["all"].all()
    wrong = shapes_score(render(scenes[:1]), [scenes[1].caption])
    assert not wrong["all"].iloc[0]


def fake_table():
    """A scored table as disruption_table makes it, without generating."""
    rows = [("baseline", "baseline", 0, "none", 60, 0.0)]
    for k in (1, 2):
        rows += [(f"top-{k}", "top", k, "all", 5, 0.2), (f"bottom-{k}", "bottom", k, "all", 58, 0.01),
                 (f"random-{k}#0", "random", k, "all", 50, 0.05), (f"random-{k}#1", "random", k, "all", 40, 0.07),
                 (f"top-{k} @b0", "top", k, "0", 30, 0.1)]
    table = pd.DataFrame(rows, columns=["condition", "set", "k", "blocks", "all_correct", "pixel_change"])
    table["steps"], table["n"] = np.where(table["blocks"] == "none", "none", "all"), 64
    table["all"] = table["all_correct"] / 64
    table["all_low"], table["all_high"] = table["all"] - 0.05, table["all"] + 0.05
    return table.set_index("condition")


def test_summarise_sets_pools_random_draws():
    summary = summarise_sets(fake_table())
    assert summary.loc[("random", 1), "draws"] == 2
    assert summary.loc[("random", 1), "all"] == pytest.approx(90 / 128)
    assert summary.loc[("random", 2), "pixel_change"] == pytest.approx(0.06)
    assert summary.loc[("top", 1), "all_low"] < 5 / 64 < summary.loc[("top", 1), "all_high"]
    assert len(summarise_sets(fake_table(), blocks="0")) == 2
    with pytest.raises(ValueError, match="no conditions"):
        summarise_sets(fake_table(), blocks="5")
    sentence = collapse_sentence(fake_table(), 1)
    assert "0.938 -> 0.078" in sentence and "bottom-1: 0.906" in sentence


def test_collapse_summary_and_maps():
    summary = collapse_summary(fake_table())
    assert list(summary.index) == [1, 2]
    assert summary.loc[1, "collapsed"] and summary.loc[1, "gap"] == pytest.approx(90 / 128 - 5 / 64)
    assert summary.loc[1, "pixel_ratio"] == pytest.approx(0.2 / 0.06)
    no_collapse = fake_table()
    no_collapse.loc["top-2", "all_correct"] = 51
    assert not collapse_summary(no_collapse).loc[2, "collapsed"]
    unscored = collapse_summary(fake_table().drop(columns=["all", "all_correct", "all_low", "all_high"]))
    assert "top" not in unscored and unscored["collapsed"].isna().all()
    block_map = condition_map(fake_table(), "pixel_change", rows="blocks", steps="all")
    assert block_map.shape == (1, 2) and list(block_map.index) == ["0"]
    with pytest.raises(ValueError, match="no top conditions"):
        condition_map(fake_table(), "pixel_change", rows="steps", blocks="all")


def test_figures():
    table = fake_table()
    figs = [plot_accuracy_vs_k(table), plot_accuracy_vs_k(table.drop(columns=["all", "all_correct"])),
            condition_grid({"baseline": np.zeros((3, 8, 8, 3)), "top-1": np.ones((3, 8, 8, 3))},
                           ["baseline", "top-1"], rows=[0, 2], prompts=PROMPTS),
            plot_map(pd.DataFrame([[0.1, 0.2], [0.3, 0.4]], index=["b0", "b1"], columns=[1, 2]), "map")]
    assert len(figs[0].axes) == 2 and len(figs[1].axes) == 1
    assert len(figs[2].axes) == 4
    with pytest.raises(KeyError, match="no images"):
        condition_grid({"baseline": np.zeros((3, 8, 8, 3))}, ["top-1"], rows=[0])
    for f in figs:
        plt.close(f)


def test_top_channels_matter_more_than_bottom_on_the_book_model():
    """The chapter's claim in miniature: with the bundled model, zeroing the top-1 channel of every block changes
    the images more than zeroing the bottom-1 channel."""
    pipe = helpers.load_pipeline("shapes")
    calib = [s.caption for s in sample_scenes(4, seed=77, exclude=HELD_OUT)]
    s = calibration_statistic(pipe, calib, seed=77, num_inference_steps=6)
    prompts = [s.caption for s in sample_scenes(8, seed=78, exclude=HELD_OUT)]
    table = disruption_table(pipe, prompts, {"top-1": helpers.top_k(s, 1), "bottom-1": helpers.bottom_k(s, 1)},
                             seed=0, score_fn=shapes_score, num_inference_steps=6)
    assert table.loc["top-1", "pixel_change"] > table.loc["bottom-1", "pixel_change"]
    assert {"all", "all_low", "all_high", "colour"} <= set(table.columns)
