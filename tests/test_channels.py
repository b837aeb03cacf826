"""The channel selections the chapters teach and export to helpers.chapters (channel_statistic, top_k, bottom_k,
random_k, top_to_median, zero_channels), used as a reader uses them: on a recording, then through intervene."""
import numpy as np
import pytest
import torch
from tiny_pipelines import hook_counts

import helpers
from helpers.chapters import bottom_k, channel_statistic, random_k, top_k, top_to_median, zero_channels


@pytest.fixture
def mean() -> torch.Tensor:
    """Signed means (steps=3, blocks=2, rows=2, channels=8) with channel 5 massive and negative, channel 2 next."""
    torch.manual_seed(0)
    m = torch.randn(3, 2, 2, 8) * 0.1
    m[..., 5] = -50.0
    m[..., 2] = 20.0
    return m


def test_statistic_is_the_absolute_mean_averaged_over_steps_and_rows(mean):
    stat = channel_statistic(mean)
    assert stat.shape == (2, 8)
    torch.testing.assert_close(stat, mean.abs().mean(dim=(0, 2)))
    torch.testing.assert_close(channel_statistic(mean, steps=[1], rows=[0]), mean[1, :, 0].abs())
    padded = torch.cat([mean, torch.full((3, 2, 1, 8), float("nan"))], dim=2)  # a step without a third row
    torch.testing.assert_close(channel_statistic(padded), stat)  # NaN padding does not count


def test_top_bottom_random_k(mean):
    stat = channel_statistic(mean)
    top = top_k(stat, 2)
    assert top.dtype == torch.long and top.tolist() == [[5, 2], [5, 2]]
    bottom = bottom_k(stat, 3)
    assert bottom.shape == (2, 3) and not set(bottom.flatten().tolist()) & {2, 5}
    assert (stat.gather(1, bottom) <= stat.gather(1, top).min()).all()
    rand = random_k(stat, 4, seed=1, exclude=top)
    assert rand.shape == (2, 4) and not set(rand.flatten().tolist()) & {2, 5}
    assert all(len(set(row)) == 4 for row in rand.tolist())
    assert torch.equal(rand, random_k(stat, 4, seed=1, exclude=top))  # seeded
    draws = {tuple(random_k(stat, 2, seed=s, exclude=top)[0].tolist()) for s in range(20)}
    assert len(draws) > 5  # not a fixed subset
    for k in (0, 9):
        with pytest.raises(ValueError, match="k must be between 1 and"):
            top_k(stat, k)


def test_top_to_median():
    stat = torch.tensor([[1.0, 1.0, 1.0, 2.0, 1000.0, 500.0, 1.0]])
    torch.testing.assert_close(top_to_median(stat), torch.tensor([[1000.0, 500.0, 2.0]]))
    torch.testing.assert_close(top_to_median(stat, ranks=1), torch.tensor([[1000.0]]))


@torch.no_grad()
def test_a_recording_feeds_the_selection_and_zeroing(make_tiny_pipe):
    """channel_statistic of a recording, top_k, and zero_channels through intervene equal mode='zero'."""
    pipe = make_tiny_pipe(text_width=32, text_layers=1)
    prompts = ["a small green square", "a big red circle"]

    def draw():
        return helpers.generate(pipe, prompts, num_inference_steps=2, output_type="pt")
    with helpers.record(pipe) as rec:
        plain = draw()
    stat = channel_statistic(rec.mean, rows=rec.conditional_rows(2))
    top = top_k(stat, 3)
    assert top.shape == (2, 3) and np.isfinite(top_to_median(stat).numpy()).all()
    assert torch.equal(stat.gather(1, top), stat.topk(3, dim=1).values)
    with helpers.intervene(pipe, edit=zero_channels(top)):
        zeroed = draw()
    with helpers.intervene(pipe, channels=top, mode="zero"):
        assert torch.equal(draw(), zeroed)
    assert not torch.equal(zeroed, plain) and hook_counts(pipe) == 0
