"""What the bundled book model must show: it draws what the caption says, and a few channels are massive."""
import numpy as np
import pytest
import torch

import helpers
from helpers.shapes import HELD_OUT, QUALITY_SEED, load_shapes_pipeline, measure_quality, sample_scenes

TEST_SEED = 4242  # not QUALITY_SEED: the reported quality figure is measured on captions no test looks at


@pytest.fixture(scope="module")
def pipe():
    return load_shapes_pipeline()


def test_draws_what_the_caption_says(pipe):
    assert TEST_SEED != QUALITY_SEED
    quality = measure_quality(pipe, n=128, seed=TEST_SEED, n_held_out=8)["seen"]
    # Colour, size, position and background are read back right almost always. Shape is the weak attribute of the
    # model trained so far on CPU (7,750 steps): about 0.79, short of the 0.95 the book aims at (see the appendix).
    for attribute in ("size", "colour", "position", "background"):
        assert quality[attribute] >= 0.95, quality
    assert quality["shape"] >= 0.7, quality


@pytest.fixture(scope="module")
def statistic_at_half(pipe):
    prompts = [s.caption for s in sample_scenes(16, seed=TEST_SEED, exclude=HELD_OUT)]
    with helpers.record(pipe) as rec:
        pipe(prompt=prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="np")
    assert rec.timesteps[10] == pytest.approx(0.5)  # step 10 of 20 is t = 0.5
    return helpers.channel_statistic(rec, steps=[10])


def test_top_channel_is_30x_the_median_in_half_the_blocks(statistic_at_half):
    ratio = helpers.top_to_median(statistic_at_half, 1)[:, 0]
    assert (ratio >= 30).float().mean() >= 0.5, ratio


def test_the_same_one_or_two_channels_lead_in_most_blocks(statistic_at_half):
    top = helpers.top_k(statistic_at_half, 1)[:, 0].tolist()
    leaders = sorted(set(top), key=top.count, reverse=True)[:2]
    assert sum(t in leaders for t in top) > len(top) / 2, top
