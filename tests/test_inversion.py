"""Flow inversion (helpers.inversion): the reversed scheduler walks the pipeline's own sigma grid backwards, the
inversion is exact for a velocity that does not depend on x, it leaves the pipeline as it found it, and bad
reference images raise errors that name the problem."""
import numpy as np
import pytest
import torch

from helpers.inversion import (CONTEXT, Inversion, ReversedFlowScheduler, attribute_agreement, check_reference,
                               image_to_latents, invert, invert_and_regenerate, invert_images, latents_to_image,
                               reconstruction, reversed_scheduler, subject_pairs, subject_scores)
from helpers.shapes import render, sample_scenes

CAPTIONS = ["a big red circle on the left on a blue background",
            "a small white square at the top on a black background"]


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(2, seed=3)


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
    x = sched.step(v, sched.timesteps[0], x, return_dict=False)[0]
    x = sched.step(v, sched.timesteps[1], x).prev_sample
    assert torch.allclose(x, torch.ones(1, 4))  # 0 + 0.5 * 1 + 0.5 * 1
    assert len(sched.trajectory) == 3
    with pytest.raises(RuntimeError, match="more often"):
        sched.step(v, 0, x)


def test_constant_velocity_is_inverted_exactly(tiny_pipe, monkeypatch):
    """With v(x, t) = c the ODE is a straight line: inverting x0 must land on x0 + c, and sampling back on x0."""
    c = torch.randn(1, 64, 48, generator=torch.Generator().manual_seed(1))

    def forward(*args, **kwargs):
        return (c.expand_as(kwargs["hidden_states"]).clone(),)
    monkeypatch.setattr(tiny_pipe.transformer, "forward", forward)
    x0 = torch.rand(1, 64, 48) * 2 - 1
    inv, redrawn = invert_and_regenerate(tiny_pipe, x0, num_inference_steps=5, prompt=CAPTIONS[:1])
    assert torch.allclose(inv.noise, x0 + c, atol=1e-5)
    assert inv.trajectory.shape == (1, 6, 64, 48)
    assert torch.allclose(redrawn, x0, atol=1e-5)


def test_invert_restores_the_scheduler_and_config(tiny_pipe):
    original, config = tiny_pipe.scheduler, dict(tiny_pipe.config)
    inv = invert(tiny_pipe, torch.zeros(2, 64, 48), num_inference_steps=3, prompt=CAPTIONS)
    assert isinstance(inv, Inversion) and inv.noise.shape == (2, 64, 48)
    assert inv.trajectory.shape == (2, 4, 64, 48) and torch.equal(inv.trajectory[:, 0], torch.zeros(2, 64, 48))
    assert tiny_pipe.scheduler is original and dict(tiny_pipe.config) == config
    with pytest.raises(ValueError, match="unknown word"), reversed_scheduler(tiny_pipe):
        tiny_pipe(prompt=["a big pink circle"], num_inference_steps=2)
    assert tiny_pipe.scheduler is original  # also after an error inside the context


def test_prompt_embeds_condition_like_prompts(tiny_pipe):
    x0 = image_to_latents(render(sample_scenes(2, seed=1)))
    embeds, pooled = tiny_pipe.encode_prompt(CAPTIONS)
    a = invert(tiny_pipe, x0, 4, prompt=CAPTIONS).noise
    b = invert(tiny_pipe, x0, 4, prompt_embeds=embeds, pooled_prompt_embeds=pooled).noise
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, invert(tiny_pipe, x0, 4, prompt=["", ""]).noise)  # the caption matters


def test_non_flow_scheduler_and_bad_arguments_are_refused(tiny_pipe):
    from diffusers import DDIMScheduler
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        ReversedFlowScheduler(DDIMScheduler())
    with pytest.raises(ValueError, match="timestep must be one of"):
        ReversedFlowScheduler(tiny_pipe.scheduler, timestep="middle")
    with pytest.raises(ValueError, match="num_inference_steps"):
        invert(tiny_pipe, torch.zeros(1, 64, 48), 0, prompt=CAPTIONS[:1])
    with pytest.raises(ValueError, match="NaN"):
        invert(tiny_pipe, torch.full((1, 64, 48), float("nan")), 2, prompt=CAPTIONS[:1])
    with pytest.raises(ValueError, match="output_type"):
        invert(tiny_pipe, torch.zeros(1, 64, 48), 2, prompt=CAPTIONS[:1], output_type="np")


def test_latents_round_trip(scenes):
    images = render(scenes)
    latents = image_to_latents(images)
    assert latents.shape == (2, 64, 48) and latents.min() >= -1 and latents.max() <= 1
    np.testing.assert_allclose(latents_to_image(latents), images, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((64, 64, 3), np.float32), r"shape \(32, 32, 3\).*got \(1, 64, 64, 3\)"),
    (np.zeros((32, 32), np.float32), r"shape \(32, 32, 3\)"),
    (np.zeros((3, 32, 32), np.float32), r"height x width x RGB"),
    (np.zeros((32, 32, 3), np.uint8), r"floats in \[0, 1\].*image / 255"),
    (np.full((32, 32, 3), 2.0, np.float32), r"values in \[0, 1\].*range \[2.000, 2.000\]"),
    (np.full((32, 32, 3), -0.5, np.float32), r"\(x \+ 1\) / 2"),
    (np.full((32, 32, 3), np.nan, np.float32), r"NaN"),
])
def test_bad_reference_images_name_the_problem(tiny_pipe, bad, message):
    with pytest.raises(ValueError, match=message):
        check_reference(bad)
    with pytest.raises(ValueError, match=message):
        invert_images(tiny_pipe, bad, CAPTIONS[:1], num_inference_steps=2)


def test_one_image_is_a_batch_of_one_and_captions_must_match(tiny_pipe, scenes):
    assert check_reference(render(scenes[0])).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="2 reference images but 1 captions"):
        invert_images(tiny_pipe, render(scenes), CAPTIONS[:1], num_inference_steps=2)


def test_attribute_agreement_reads_both_images(scenes):
    images = render(scenes)
    assert attribute_agreement(images, images).all()
    swapped = attribute_agreement(images[::-1], images)
    assert swapped.shape == (2, 5) and not swapped.all()


def test_reconstruction_reports_error_and_agreement(tiny_pipe, scenes):
    out = reconstruction(tiny_pipe, render(scenes), [s.caption for s in scenes], num_inference_steps=3)
    assert out["mae"].shape == (2,) and (out["mae"] >= 0).all() and (out["mae"] <= 1).all()
    assert out["agree"].shape == (2, 5) and out["all"].shape == (2,)
    assert out["images"].shape == (2, 32, 32, 3)
    assert out["inversion"].trajectory.shape == (2, 4, 64, 48)


def test_bundled_model_reconstructs_better_with_more_steps():
    """On the trained book model, regenerating from the inverted noise redraws the reference closely, and closer
    with more steps (a regression test of the inversion against the real velocity field)."""
    from helpers.shapes import load_shapes_pipeline
    pipe = load_shapes_pipeline()
    few = sample_scenes(4, seed=11)
    images, captions = render(few), [s.caption for s in few]
    coarse = reconstruction(pipe, images, captions, num_inference_steps=4)["mae"].mean()
    fine = reconstruction(pipe, images, captions, num_inference_steps=16)["mae"].mean()
    assert fine < coarse


def test_subject_transport_runs_end_to_end_and_caches_what_it_is_asked(tiny_pipe, scenes):
    from helpers.inversion import subject_transport
    refs, tgts, _ = subject_pairs(2, seed=0)
    latents = image_to_latents(render(refs))
    full = subject_transport(tiny_pipe, latents, [r.caption for r in refs], [t.caption for t in tgts], k=2,
                             num_inference_steps=3)
    assert set(full.images) == {"no transport", "top-2", "random-2"}
    assert all(im.shape == (2, 32, 32, 3) for im in full.images.values())
    assert full.cache.channels.shape == (2, 32) and full.statistic.shape == (2, 32)
    top, rand = full.channels["top-2"], full.channels["random-2"]
    assert not (top[:, :, None] == rand[:, None, :]).any(), "the control must not reuse the massive channels"
    assert set(full.masks) == {(s, b) for s in range(3) for b in range(2)}
    light = subject_transport(tiny_pipe, latents, [r.caption for r in refs], [t.caption for t in tgts], k=2,
                              num_inference_steps=3, cache_channels="used")
    assert light.cache.channels.shape == (2, 4)
    for name in full.images:  # the same computation whatever was cached
        np.testing.assert_allclose(light.images[name], full.images[name], atol=1e-5)
    with pytest.raises(ValueError, match="cache_channels"):
        subject_transport(tiny_pipe, latents, [r.caption for r in refs], [t.caption for t in tgts], k=2,
                          num_inference_steps=2, cache_channels="some")


def test_transport_changes_the_target_and_starts_from_the_inverted_noise(tiny_pipe):
    from helpers.inversion import subject_transport
    refs, tgts, _ = subject_pairs(2, seed=1)
    out = subject_transport(tiny_pipe, image_to_latents(render(refs)), [r.caption for r in refs],
                            [t.caption for t in tgts], k=8, num_inference_steps=3)
    assert not np.allclose(out.images["top-8"], out.images["no transport"])
    again = tiny_pipe(prompt=[t.caption for t in tgts], latents=out.inversion.noise, num_inference_steps=3,
                 output_type="np").images
    np.testing.assert_allclose(out.images["no transport"], again, atol=1e-6)


def test_subject_pairs_name_a_different_subject_in_a_changed_context():
    from helpers.shapes import HELD_OUT, is_held_out
    refs, tgts, changed = subject_pairs(60, seed=4)
    assert len(refs) == len(tgts) == len(changed) == 60
    assert changed[:3] == ["size", "position", "background"]
    for r, t, c in zip(refs, tgts, changed):
        assert r.shape != t.shape and r.colour != t.colour
        assert getattr(r, c) != getattr(t, c)
        assert all(getattr(r, a) == getattr(t, a) for a in CONTEXT if a != c)
        assert r.colour != t.background and not is_held_out(t, HELD_OUT) and not is_held_out(r, HELD_OUT)
    assert subject_pairs(5, seed=4)[0] == subject_pairs(5, seed=4)[0]
    assert set(subject_pairs(4, seed=0, changes="background")[2]) == {"background"}
    with pytest.raises(ValueError, match="context attributes"):
        subject_pairs(4, changes=["shape"])


def test_subject_scores_against_ground_truth():
    refs, tgts, _ = subject_pairs(6, seed=2)
    ideal = [t.replace(shape=r.shape, colour=r.colour) for r, t in zip(refs, tgts)]
    s = subject_scores(render(ideal), refs, tgts)
    assert s["both"].all()
    s = subject_scores(render(tgts), refs, tgts)  # the target prompt alone: right context, wrong subject
    assert s["context"].all() and not s["identity"].any() and not s["both"].any()
    s = subject_scores(render(refs), refs, tgts)  # a copy of the reference: right subject, wrong context
    assert s["identity"].all() and not s["context"].any()
    with pytest.raises(ValueError, match="one of each per pair"):
        subject_scores(render(refs)[:2], refs, tgts)
