"""Flow inversion (helpers.inversion): the reversed scheduler walks the pipeline's own sigma grid backwards, the
inversion is exact for a velocity that does not depend on x, it leaves the pipeline as it found it, recording
inside it counts its steps, and bad input raises errors that name the problem."""
import numpy as np
import pytest
import torch
from tiny_pipelines import hook_counts

import helpers
from helpers.inversion import Inversion, ReversedFlowScheduler, invert, reversed_scheduler
from helpers.shapes import render, sample_scenes
from helpers.shapes.pipeline import image_to_latents

CAPTIONS = ["a big red circle on the left on a blue background",
            "a small white square at the top on a black background"]


def test_reversed_grid_is_the_pipeline_grid_backwards(tiny_pipe):
    sched = ReversedFlowScheduler(tiny_pipe.scheduler)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4))
    np.testing.assert_allclose(sched.sigmas.numpy(), [0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(sched.timesteps.numpy(), [0, 250, 500, 750], atol=1e-3)  # velocity at the current t
    nxt = ReversedFlowScheduler(tiny_pipe.scheduler, timestep="next")
    nxt.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4))
    np.testing.assert_allclose(nxt.timesteps.numpy(), [250, 500, 750, 1000], atol=1e-3)


def test_step_moves_up_the_grid_and_keeps_the_trajectory(tiny_pipe):
    sched = ReversedFlowScheduler(tiny_pipe.scheduler)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.5, 2))  # reversed: 0, 0.5, 1
    x, v = torch.zeros(1, 4), torch.ones(1, 4)
    assert sched.step_index == 0
    x = sched.step(v, sched.timesteps[0], x, return_dict=False)[0]
    x = sched.step(v, sched.timesteps[1], x).prev_sample
    assert torch.allclose(x, torch.ones(1, 4)) and sched.step_index == 2  # 0 + 0.5 * 1 + 0.5 * 1
    assert len(sched.trajectory) == 3
    with pytest.raises(RuntimeError, match="more often"):
        sched.step(v, 0, x)


@torch.no_grad()
def test_constant_velocity_is_inverted_exactly(tiny_pipe, monkeypatch):
    """With v(x, t) = c the ODE is a straight line: inverting x0 must land on x0 + c, and sampling back on x0."""
    c = torch.randn(1, 64, 48, generator=torch.Generator().manual_seed(1))

    def forward(*args, **kwargs):
        return (c.expand_as(kwargs["hidden_states"]).clone(),)
    monkeypatch.setattr(tiny_pipe.transformer, "forward", forward)
    x0 = torch.rand(1, 64, 48) * 2 - 1
    inv = invert(tiny_pipe, x0, num_inference_steps=np.int64(5), prompt=CAPTIONS[:1])
    assert torch.allclose(inv.noise, x0 + c, atol=1e-5)
    assert inv.trajectory.shape == (1, 6, 64, 48)
    redrawn = tiny_pipe(prompt=CAPTIONS[:1], latents=inv.noise, num_inference_steps=5, output_type="latent").images
    assert torch.allclose(redrawn, x0, atol=1e-5)
    assert not {"step", "set_timesteps"} & set(vars(tiny_pipe.scheduler))  # the scheduler is left as it was


@torch.no_grad()
def test_invert_restores_the_scheduler_and_config_and_records_its_steps(tiny_pipe):
    original, config = tiny_pipe.scheduler, dict(tiny_pipe.config)
    with helpers.record(tiny_pipe) as rec:
        inv = invert(tiny_pipe, torch.zeros(2, 64, 48), num_inference_steps=3, prompt=CAPTIONS)
    assert rec.mean.shape[0] == 3 and rec.timesteps == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-6)
    assert isinstance(inv, Inversion) and inv.noise.shape == (2, 64, 48)
    assert inv.trajectory.shape == (2, 4, 64, 48) and torch.equal(inv.trajectory[:, 0], torch.zeros(2, 64, 48))
    assert inv.sigmas[0] == 0 and inv.sigmas[-1] == 1 and (inv.sigmas.diff() > 0).all()
    assert tiny_pipe.scheduler is original and dict(tiny_pipe.config) == config
    with pytest.raises(ValueError, match="unknown word"), reversed_scheduler(tiny_pipe):
        tiny_pipe(prompt=["a big pink circle"], num_inference_steps=2)
    assert tiny_pipe.scheduler is original and hook_counts(tiny_pipe) == 0  # also after an error inside


@torch.no_grad()
def test_prompt_embeds_condition_like_prompts(tiny_pipe):
    x0 = image_to_latents(render(sample_scenes(2, seed=1)))
    embeds, pooled = tiny_pipe.encode_prompt(CAPTIONS)
    a = invert(tiny_pipe, x0, 3, prompt=CAPTIONS).noise
    b = invert(tiny_pipe, x0, 3, prompt_embeds=embeds, pooled_prompt_embeds=pooled).noise
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, invert(tiny_pipe, x0, 3, prompt=["", ""]).noise)  # the caption matters


def test_non_flow_scheduler_and_bad_arguments_are_refused(tiny_pipe):
    from diffusers import DDIMScheduler
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        ReversedFlowScheduler(DDIMScheduler())
    with pytest.raises(ValueError, match="timestep must be one of"):
        ReversedFlowScheduler(tiny_pipe.scheduler, timestep="middle")
    for steps in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
            invert(tiny_pipe, torch.zeros(1, 64, 48), steps, prompt=CAPTIONS[:1])
    with pytest.raises(ValueError, match="NaN"):
        invert(tiny_pipe, torch.full((1, 64, 48), float("nan")), 2, prompt=CAPTIONS[:1])
    with pytest.raises(ValueError, match="finite tensor"):
        invert(tiny_pipe, np.zeros((1, 64, 48)), 2, prompt=CAPTIONS[:1])
    with pytest.raises(ValueError, match="output_type"):
        invert(tiny_pipe, torch.zeros(1, 64, 48), 2, prompt=CAPTIONS[:1], output_type="np")


def test_bundled_model_reconstructs_better_with_more_steps():
    """On the trained book model, regenerating from the inverted noise redraws the reference closely, and closer
    with more steps (a regression test of the inversion against the real velocity field)."""
    from helpers.shapes import MODEL_DIR, load_shapes_pipeline
    if not (MODEL_DIR / "model_index.json").exists():
        pytest.skip("no bundled model")
    pipe = load_shapes_pipeline()
    scenes = sample_scenes(2, seed=11)
    x0, captions = image_to_latents(render(scenes)), [s.caption for s in scenes]
    def error(steps):
        noise = invert(pipe, x0, steps, prompt=captions).noise
        return (pipe(prompt=captions, latents=noise, num_inference_steps=steps, output_type="latent").images - x0
                ).abs().mean()
    with torch.no_grad():
        assert error(8) < error(3)
