"""Chapter 6's measurements: the variance split, the AdaLN conditioning, split transport and the transport map."""
import numpy as np
import pytest
import torch

from helpers.beyond import (grid_rows, grid_values, heldout_r2, modulation, prompt_average, record_conditioning,
                            shares_table, split_transport, step_onehot, step_windows, transport_map, variance_shares)
from helpers.models import residual_blocks
from helpers.transport import plain_generation, record_source

STEPS = 3
PROMPTS = ["a big red circle on the left on a blue background", "a small green square at the top on a white background"]
SEEDS = [0, 1]


def test_variance_shares_recover_known_effects():
    rng = np.random.default_rng(0)
    t, p, s, n = 5, 4, 3, 16
    step, prompt, pos = rng.normal(size=(t, 1, 1, 1)), rng.normal(size=(1, p, 1, 1)), rng.normal(size=(1, 1, 1, n))
    step, prompt, pos = (x - x.mean() for x in (step, prompt, pos))  # centred effects: no constant in them
    v = 10.0 + 3 * step + prompt + 0 * pos
    v = np.broadcast_to(v, (t, p, s, n))
    shares = variance_shares(v)
    expected_step = (9 * (step ** 2).mean()) / (9 * (step ** 2).mean() + (prompt ** 2).mean())
    assert shares["step"] == pytest.approx(expected_step, abs=1e-9)
    assert shares["prompt"] == pytest.approx(1 - expected_step, abs=1e-9)
    assert shares["noise"] == pytest.approx(0, abs=1e-9) and shares["position"] == pytest.approx(0, abs=1e-9)
    assert shares["constant"] == pytest.approx(100 / (v ** 2).mean())


def test_variance_shares_add_up_and_see_interactions():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4, 3, 2, 9))
    shares = variance_shares(v)
    assert sum(shares[k] for k in shares if k != "constant") == pytest.approx(1.0)
    assert all(shares[k] >= -1e-12 for k in shares)
    # a pure prompt x position pattern (zero-mean along both) is all interaction
    a, b = rng.normal(size=3), rng.normal(size=9)
    pattern = np.outer(a - a.mean(), b - b.mean())[None, :, None, :]
    inter = variance_shares(np.broadcast_to(pattern, (4, 3, 2, 9)))
    assert inter["prompt x position"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="steps, prompts, noises, tokens"):
        variance_shares(np.zeros((2, 3)))


@pytest.fixture(scope="module")
def grid(tiny_pipe):
    rows, seeds = grid_rows(PROMPTS, SEEDS)
    channels = torch.tensor([0, 5, 7])
    with record_conditioning(tiny_pipe) as cond:
        cache = record_source(tiny_pipe, rows, channels, seed=seeds, num_inference_steps=STEPS, dtype=torch.float32)
    return cache, cond


def test_grid_rows_are_prompt_major():
    rows, seeds = grid_rows(["a", "b"], [3, 4, 5])
    assert rows == ["a", "a", "a", "b", "b", "b"] and seeds == [3, 4, 5, 3, 4, 5]


def test_grid_values_and_shares_table(grid):
    cache, _ = grid
    v = grid_values(cache, len(PROMPTS), len(SEEDS), channel=1, block=0)
    assert v.shape == (STEPS, len(PROMPTS), len(SEEDS), cache.n_tokens)
    # row = prompt * noises + noise
    assert np.allclose(v[1, 1, 0], cache.values[1, 0][2, :, 1].numpy())
    table = shares_table(cache, len(PROMPTS), len(SEEDS), [0, 1], ["a", "b"])
    assert list(table.index) == ["a", "b"] and "prompt x position" in table.columns
    with pytest.raises(ValueError, match="not 3 prompts x 2 noises"):
        grid_values(cache, 3, 2, 0, 0)


def test_prompt_average_is_the_mean_over_prompts_per_noise(grid):
    cache, _ = grid
    avg = prompt_average(cache, len(PROMPTS), len(SEEDS))
    v = cache.values[0, 1]
    assert torch.allclose(avg[0, 1][1], (v[1] + v[3]) / 2)


def test_conditioning_is_what_the_blocks_see(tiny_pipe, grid):
    cache, cond = grid
    transformer = tiny_pipe.transformer
    temb = cond.temb
    assert temb.shape == (STEPS, cache.n_sources, transformer.config.num_attention_heads *
                          transformer.config.attention_head_dim)
    # the block's AdaLN linear, applied by the model, equals modulation() from the recorded temb
    block = residual_blocks(tiny_pipe)[0].module
    seen = []
    hook = block.norm1.linear.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        plain_generation(tiny_pipe, ["a big red circle on the left on a blue background"], num_inference_steps=1,
                         output_type="latent")
    finally:
        hook.remove()
    with record_conditioning(tiny_pipe) as one:
        plain_generation(tiny_pipe, ["a big red circle on the left on a blue background"], num_inference_steps=1,
                         output_type="latent")
    width = temb.shape[-1]
    expected = seen[0].unflatten(-1, (-1, width))[..., 4]
    assert torch.allclose(modulation(tiny_pipe, one.temb[0], 0, 4), expected, atol=1e-6)
    assert modulation(tiny_pipe, one.temb[0], len(residual_blocks(tiny_pipe)) - 1, 4).shape[-1] == 3  # single block
    assert not transformer.time_text_embed.timestep_embedder._forward_hooks
    assert not transformer.time_text_embed.text_embedder._forward_hooks


def test_record_conditioning_names_unsupported_models():
    class NoAdaLN(torch.nn.Module):
        pass

    class Pipe:
        transformer = NoAdaLN()

    with pytest.raises(TypeError, match="NoAdaLN has no FLUX/SD3-style time_text_embed"):
        record_conditioning(Pipe())


def test_heldout_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    train = np.arange(200) < 100
    assert heldout_r2(x, x @ [1.0, -2.0, 0.5] + 3, train) > 0.999
    assert heldout_r2(x, rng.normal(size=200), train) < 0.1
    assert step_onehot(3, 2).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]


def test_split_transport_parts(tiny_pipe, grid):
    cache, _ = grid
    avg = prompt_average(cache, len(PROMPTS), len(SEEDS))
    source = record_source(tiny_pipe, [PROMPTS[0]], cache.channels, seed=[SEEDS[0]], num_inference_steps=STEPS,
                           dtype=torch.float32)
    target = [PROMPTS[1]]
    kwargs = dict(num_inference_steps=STEPS, output_type="latent")
    # same noise on both sides: mu cancels, the prompt part is the whole transport, the constant part nothing
    full = split_transport(tiny_pipe, source, avg, [0], [0], target, "full", seed=[SEEDS[0]], **kwargs)
    prompt = split_transport(tiny_pipe, source, avg, [0], [0], target, "prompt", seed=[SEEDS[0]], **kwargs)
    constant = split_transport(tiny_pipe, source, avg, [0], [0], target, "constant", seed=[SEEDS[0]], **kwargs)
    plain = plain_generation(tiny_pipe, target, seed=[SEEDS[0]], **kwargs)
    assert torch.allclose(full, prompt, atol=1e-5)
    assert torch.allclose(constant, plain, atol=1e-6)
    assert not torch.allclose(full, plain, atol=1e-4)
    # across noises the three differ
    across = {p: split_transport(tiny_pipe, source, avg, [0], [1], target, p, seed=[SEEDS[1]], **kwargs)
              for p in ("full", "prompt", "constant")}
    assert not torch.allclose(across["full"], across["prompt"], atol=1e-5)
    assert not torch.allclose(across["constant"], plain_generation(tiny_pipe, target, seed=[SEEDS[1]], **kwargs),
                              atol=1e-5)
    with pytest.raises(ValueError, match="part must be"):
        split_transport(tiny_pipe, source, avg, [0], [0], target, "half", seed=0, **kwargs)
    with pytest.raises(ValueError, match="one source noise and one target noise"):
        split_transport(tiny_pipe, source, avg, [0, 1], [0], target, "prompt", seed=0, **kwargs)
    assert not any(b.module._forward_hooks for b in residual_blocks(tiny_pipe))


def test_step_windows():
    assert step_windows(20, 4) == {"0-4": list(range(5)), "5-9": list(range(5, 10)), "10-14": list(range(10, 15)),
                                   "15-19": list(range(15, 20))}
    assert sum(len(v) for v in step_windows(7, 3).values()) == 7
    with pytest.raises(ValueError, match="n_windows"):
        step_windows(4, 5)


def test_transport_map_cells(tiny_pipe):
    source = record_source(tiny_pipe, [PROMPTS[0]], torch.tensor([1, 2]), num_inference_steps=STEPS)
    plain = plain_generation(tiny_pipe, [PROMPTS[1]], num_inference_steps=STEPS)
    frame = transport_map(tiny_pipe, source, [PROMPTS[1]], lambda images: np.abs(images - plain).mean(),
                          {"first": [0], "all": None}, {"0": [0], "all": None}, num_inference_steps=STEPS)
    assert frame.shape == (2, 2) and list(frame.index) == ["first", "all"] and list(frame.columns) == ["0", "all"]
    assert (frame.to_numpy() > 0).all()
    assert frame.loc["all", "all"] >= frame.loc["first", "0"]
