"""The paper's statistic and the channel selections and summaries built on it."""
import pytest
import torch

import helpers


@pytest.fixture
def mean() -> torch.Tensor:
    """Signed means (steps=3, blocks=2, rows=2, channels=8) with channel 5 massive and negative, channel 2 next."""
    torch.manual_seed(0)
    m = torch.randn(3, 2, 2, 8) * 0.1
    m[..., 5] = -50.0
    m[..., 2] = 20.0
    return m


def test_statistic_is_the_absolute_mean_aggregated_over_steps_and_prompts(mean):
    stat = helpers.channel_statistic(mean)
    assert stat.shape == (2, 8)
    torch.testing.assert_close(stat, mean.abs().mean(dim=(0, 2)))
    torch.testing.assert_close(helpers.channel_statistic(mean, steps=[1], prompts=[0]), mean[1, :, 0].abs())
    torch.testing.assert_close(helpers.channel_statistic(mean, reduce="max"), mean.abs().amax(dim=(0, 2)))
    assert helpers.channel_statistic(mean, per="step").shape == (3, 2, 8)
    torch.testing.assert_close(helpers.channel_statistic(mean, per="prompt")[1], mean[:, :, 1].abs().mean(0))


def test_top_bottom_random_k(mean):
    stat = helpers.channel_statistic(mean)
    top = helpers.top_k(stat, 2)
    assert top.dtype == torch.long and top.tolist() == [[5, 2], [5, 2]]
    bottom = helpers.bottom_k(stat, 3)
    assert bottom.shape == (2, 3) and not set(bottom.flatten().tolist()) & {2, 5}
    assert (stat.gather(1, bottom) <= stat.gather(1, top).min()).all()
    rand = helpers.random_k(stat, 4, seed=1, exclude=top)
    assert rand.shape == (2, 4) and not set(rand.flatten().tolist()) & {2, 5}
    assert all(len(set(row)) == 4 for row in rand.tolist())
    assert torch.equal(rand, helpers.random_k(stat, 4, seed=1, exclude=top))


@pytest.mark.parametrize("k", [0, -1, 9, 2.0, True])
def test_k_must_be_between_1_and_the_width(mean, k):
    stat = helpers.channel_statistic(mean)
    for select in (helpers.top_k, helpers.bottom_k, helpers.random_k):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 8\]"):
            select(stat, k)


def test_bad_statistic_inputs(mean):
    with pytest.raises(ValueError, match="steps, blocks, rows, channels"):
        helpers.channel_statistic(mean[0])
    with pytest.raises(IndexError, match="steps"):
        helpers.channel_statistic(mean, steps=[3])
    with pytest.raises(ValueError, match="reduce must be"):
        helpers.channel_statistic(mean, reduce="sum")


def test_top_to_median():
    stat = torch.tensor([[1.0, 1.0, 1.0, 2.0, 1000.0, 500.0, 1.0]])
    torch.testing.assert_close(helpers.top_to_median(stat), torch.tensor([[1000.0, 500.0, 2.0]]))


def test_persistence_and_frequency():
    idx = torch.tensor([[5, 2], [5, 2], [5, 7]])
    torch.testing.assert_close(helpers.persistence(idx), torch.tensor([[1, 1, 1 / 3], [1, 1, 1 / 3],
                                                                       [1 / 3, 1 / 3, 1.0]]))
    freq = helpers.channel_frequency(idx, width=8)
    assert freq[5] == 1 and freq[2] == pytest.approx(2 / 3) and freq[0] == 0


def test_selection_feeds_intervene(make_tiny_pipe):
    """top_k's (blocks, k) output is what intervene takes."""
    pipe = make_tiny_pipe(text_width=32, text_layers=1)
    with helpers.record(pipe) as rec:
        pipe(prompt=["a small green square"], num_inference_steps=2, output_type="pt")
    idx = helpers.top_k(helpers.channel_statistic(rec), 3)
    assert idx.shape == (2, 3)
    with helpers.intervene(pipe, channels=idx):
        pipe(prompt=["a small green square"], num_inference_steps=2, output_type="pt")
