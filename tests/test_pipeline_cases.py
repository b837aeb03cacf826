"""The cases outside plain text-to-image (issue 14, points 1-5), each through a real diffusers pipeline's ``__call__``
with tiny random components, checked against an independent capture of the block outputs:

1. pipelines that append reference-image tokens (FLUX.1 Kontext, FLUX.2, FLUX.2-klein with ``image=``,
   Qwen-Image-Edit and -Edit-Plus): record, intervene and transport act on the generated image's tokens only;
2. steps come from the scheduler: bfloat16 timesteps that collide, a second-order scheduler;
3. SD3 skip-layer guidance: a third call on the cond rows in some steps, without the skipped blocks;
4. transport writes the source's value exactly in bfloat16 (a small source over a large target);
5. two-call (true CFG) guidance: the conditional rows come first, from the one resolver.

These use only the public API (``record``, ``intervene``, ``helpers.transport``), so the same tests can be run
against an older helpers package.
"""
from __future__ import annotations

import numpy as np
import pytest
import tiny_pipelines as tp
import torch
from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

import helpers
from helpers import transport

# --------------------------------------------------------------------------------------- 1. reference-image tokens

EMBEDS = {"FluxKontextPipeline": ("prompt_embeds", "pooled_prompt_embeds", 16),
          "Flux2Pipeline": ("prompt_embeds", None, 48),
          "QwenImageEditPipeline": ("prompt_embeds", "prompt_embeds_mask", 16),
          "QwenImageEditPlusPipeline": ("prompt_embeds", "prompt_embeds_mask", 16)}


def reference_call(name: str) -> dict:
    """Arguments of one 32x32 generation (64 generated tokens) conditioned on a reference image."""
    if name == "Flux2KleinPipeline":
        return dict(prompt=tp.PROMPTS[:1], image=tp.reference_image(64), height=32, width=32, max_sequence_length=16)
    g = torch.Generator().manual_seed(0)
    embeds, second, width = EMBEDS[name]
    kw = {embeds: torch.randn(1, 5, width, generator=g), "height": 32, "width": 32}
    if second == "pooled_prompt_embeds":
        kw[second] = torch.randn(1, 16, generator=g)
    elif second:
        kw[second] = torch.ones(1, 5, dtype=torch.long)
    if name == "FluxKontextPipeline":  # keep the reference at 32x32 too
        return dict(kw, image=tp.reference_image(32), max_area=32 * 32, _auto_resize=False)
    return dict(kw, image=tp.reference_image(64 if name == "Flux2Pipeline" else 32))


@pytest.fixture(scope="module")
def small_references():
    """Qwen-Image-Edit resizes every reference to about 1024x1024 pixels: 32x32 here, for a fast test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (32, 32, None))
        mp.setattr(pipeline_qwenimage_edit_plus, "VAE_IMAGE_SIZE", 32 * 32)
        mp.setattr(pipeline_qwenimage_edit_plus, "CONDITION_IMAGE_SIZE", 32 * 32)
        yield


REFERENCE_PIPELINES = ["FluxKontextPipeline", "Flux2Pipeline", "Flux2KleinPipeline", "QwenImageEditPipeline",
                       "QwenImageEditPlusPipeline"]


def build_reference(name: str):
    return tp.build("Flux2Transformer2DModel" if name == "Flux2KleinPipeline" else name)


@torch.no_grad()
@pytest.mark.parametrize("name", REFERENCE_PIPELINES)
def test_reference_tokens_are_neither_recorded_nor_changed(name, small_references):
    pipe, kw, generated = build_reference(name), reference_call(name), 64
    with tp.capture(pipe) as (plain, kwargs), helpers.record(pipe, keep_tokens={"steps": [1]}) as rec:
        pipe(**kw, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    first = tp.image_and_text("", 0, plain[0][0], kwargs[0])[0]
    assert first.shape[1] > generated  # the reference's tokens follow the generated image's
    for step, call in enumerate(plain):
        for b, out in call.items():
            image = tp.image_and_text("", b, out, kwargs[step])[0][:, :generated].float()
            torch.testing.assert_close(rec.mean[step, b], image.mean(1), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rec.abs_max[step, b], image.abs().amax(1))
            if step == 1:
                assert torch.equal(rec.tokens[1, b].float(), image)
    # Zero one channel of the generated image's first half (a token mask the size of the generated image).
    mask = torch.arange(generated) < generated // 2
    with tp.capture(pipe) as (before, _), helpers.intervene(pipe, channels=[3], mode="zero", token_mask=mask):
        with tp.capture(pipe) as (after, _):
            pipe(**kw, num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0))
    for step in range(2):
        for b in before[step]:
            x, tx = tp.image_and_text("", b, before[step][b], kwargs[step])
            y, ty = tp.image_and_text("", b, after[step][b], kwargs[step])
            expected = x.clone()
            expected[:, :generated][:, mask, 3] = 0
            assert torch.equal(y, expected), (step, b)  # reference tokens and the rest untouched
            assert torch.equal(tx, ty)
    assert tp.hook_counts(pipe) == 0


@torch.no_grad()
def test_subject_transport_with_a_reference_image(small_references):
    """Image-conditioned transport on FLUX.2-klein with ``image=``: the cache holds the generated image's tokens,
    a mask of its size is taken, and cached transport equals lockstep transport."""
    pipe, kw = build_reference("Flux2KleinPipeline"), reference_call("Flux2KleinPipeline")
    del kw["prompt"]
    kw.update(num_inference_steps=2, output_type="latent")
    source, target = ["a red car on a city street"], ["a corgi on the beach at sunset"]
    channels = torch.tensor([1, 4, 9])
    cache = transport.record_source(pipe, source, channels, **kw)
    assert {tuple(v.shape) for v in cache.values.values()} == {(1, 64, 3)}
    mask = torch.arange(64) % 3 == 0
    cached = transport.cached_transport(pipe, cache, target, mask=mask, **kw)
    lock = transport.lockstep_transport(pipe, source, target, channels, mask=mask, **kw)
    torch.testing.assert_close(torch.as_tensor(cached), torch.as_tensor(lock.target), rtol=1e-4, atol=1e-5)
    assert tp.hook_counts(pipe) == 0


# --------------------------------------------------------------------------------------- 2. steps from the scheduler

@torch.no_grad()
def test_bfloat16_timesteps_that_collide_are_separate_steps():
    """FLUX.1 casts the timestep to the latents' dtype: 1000 and 999 are both 1000 in bfloat16."""
    pipe = tp.build("FluxTransformer2DModel", torch.bfloat16)
    kw = dict(prompt=tp.PROMPTS[:1], sigmas=[1.0, 0.999, 0.5], output_type="latent",
              **tp.SETTINGS["FluxTransformer2DModel"][0])
    with tp.capture(pipe) as (_, kwargs), helpers.record(pipe) as rec:
        pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert kwargs[0]["timestep"].item() == kwargs[1]["timestep"].item()  # they collide
    assert rec.mean.shape[0] == 3 and rec.rows_per_step == [1, 1, 1]
    with tp.capture(pipe) as (before, _), helpers.intervene(pipe, channels=[2], mode="zero", steps=[1]):
        with tp.capture(pipe) as (after, _):
            pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(after[0][0][1], before[0][0][1])  # step 0 untouched
    assert (after[1][0][1][..., 2] == 0).all() and (before[1][0][1][..., 2] != 0).any()  # step 1 changed
    assert torch.equal(after[2][0][1], before[2][0][1])


@torch.no_grad()
def test_a_second_order_scheduler_counts_every_iteration():
    """FlowMatchHeunDiscreteScheduler makes 2N - 1 iterations for N steps, each one transformer call."""
    sd3 = tp.build("SD3Transformer2DModel")
    pipe = StableDiffusion3Pipeline(**{**sd3.components, "scheduler": FlowMatchHeunDiscreteScheduler(shift=3.0)})
    pipe.set_progress_bar_config(disable=True)
    with tp.capture(pipe) as (calls, _), helpers.record(pipe) as rec:
        pipe(prompt=tp.PROMPTS, num_inference_steps=2, output_type="latent", **tp.SETTINGS["SD3Transformer2DModel"][0])
    assert len(calls) == len(pipe.scheduler.timesteps) == 3
    assert rec.mean.shape[:3] == (3, 2, 4) and not rec.mean.isnan().any()
    torch.testing.assert_close(rec.mean[2, 1], calls[2][1][1].float().mean(1))
    assert tp.hook_counts(pipe) == 0


# --------------------------------------------------------------------------------------- 3. skip-layer guidance

@torch.no_grad()
def test_sd3_skip_layer_guidance_adds_rows_in_some_steps():
    pipe = tp.build("SD3Transformer2DModel")
    kw = dict(prompt=tp.PROMPTS, num_inference_steps=3, output_type="latent", skip_guidance_layers=[0],
              skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.9, **tp.SETTINGS["SD3Transformer2DModel"][0])
    with tp.capture(pipe) as (calls, _), helpers.record(pipe) as rec:
        pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert [len(c) for c in calls] == [2, 2, 1, 2, 1]  # steps 1 and 2 add a call without block 0
    assert rec.rows_per_step == [4, 6, 6] and rec.mean.shape[:3] == (3, 2, 6)
    assert rec.mean[0, :, 4:].isnan().all() and not rec.mean[0, :, :4].isnan().any()  # step 0 has 4 rows
    assert rec.mean[1, 0, 4:].isnan().all()  # the third call skipped block 0
    torch.testing.assert_close(rec.mean[1, 1, 4:], calls[2][1][1].float().mean(1))
    assert rec.conditional_rows(2) == [2, 3]
    # rows=[4, 5] changes only the skip-layer call's rows; steps 1-2 ran them
    with tp.capture(pipe) as (before, _), helpers.intervene(pipe, channels=[0], rows=[4, 5], blocks=[1]):
        with tp.capture(pipe) as (after, _):
            pipe(**kw, generator=torch.Generator().manual_seed(0))
    assert torch.equal(after[1][1][1], before[1][1][1]) and (after[2][1][1][..., 0] == 0).all()
    assert tp.hook_counts(pipe) == 0


# --------------------------------------------------------------------------------------- 4. exact transport

@torch.no_grad()
@pytest.mark.parametrize("how", ["cached", "lockstep"])
def test_transport_writes_a_small_source_over_a_large_target_exactly_in_bfloat16(how, make_tiny_pipe):
    """The source's value of a transported channel is 5.5, the target's -3008: the target must read 5.5 (the blend
    ``tgt + a p (src - tgt)`` gives 0.0 in bfloat16)."""
    pipe = make_tiny_pipe().to(torch.bfloat16)
    sources, targets = ["a big red circle"], ["a small green square"]
    kw = dict(num_inference_steps=2, blocks=[0], steps=[1])

    def plant(value):  # block 0, channel 7: value (the next hook, transport's, sees it)
        return {(s, 0): torch.full((64, 32), value, dtype=torch.bfloat16) for s in range(2)}
    values_src = plant(5.5)
    with helpers.intervene(pipe, channels=[7], mode="replace", values=values_src, blocks=[0]):
        cache = transport.record_source(pipe, sources, [7], blocks=[0], steps=[1], num_inference_steps=2)
    assert (cache.values[1, 0] == 5.5).all()
    row_values = {k: torch.stack([torch.full((64, 32), 5.5), torch.full((64, 32), -3008.0)]).bfloat16()
                  for k in plant(0)}
    seen = []  # what the next block is given: block 0's output after every hook on it

    def look(module, args, kwargs):
        seen.append(kwargs["hidden_states"][..., 7].clone())
    handle = pipe.transformer.single_transformer_blocks[0].register_forward_pre_hook(look, with_kwargs=True)
    try:
        if how == "cached":
            with helpers.intervene(pipe, channels=[7], mode="replace", values=plant(-3008.0), blocks=[0]):
                transport.cached_transport(pipe, cache, targets, **kw)
            transported = seen[1]
        else:
            with helpers.intervene(pipe, channels=[7], mode="replace", values=row_values, blocks=[0]):
                transport.lockstep_transport(pipe, sources, targets, [7], **kw)
            transported = seen[1][1:]  # the target row
    finally:
        handle.remove()
    assert (seen[0][-1] == -3008).all()  # step 0: not transported
    assert (transported == 5.5).all(), transported.unique()
    assert tp.hook_counts(pipe) == 0


# --------------------------------------------------------------------------------------- 5. guidance rows

def test_models_say_how_guidance_is_laid_out_and_turned_on():
    models = helpers.MODELS
    assert {m.guidance for m in models.values()} <= {"none", "batched", "two calls"}
    for name in ("qwen-image", "flux.1-dev"):  # true CFG runs only with a negative prompt
        assert models[name].guidance == "two calls" and "negative_prompt" in models[name].guidance_on
    assert models["qwen-image"].settings.get("negative_prompt") is not None  # so the chapters do guide Qwen-Image
    for name in ("sd3.5-medium", "sana-1.5", "pixart-sigma", "shapes"):
        assert models[name].guidance == "batched" and models[name].guidance_on == ("guidance_scale",)


@torch.no_grad()
@pytest.mark.parametrize("name", ["QwenImageTransformer2DModel", "FluxTransformer2DModel"])
def test_true_cfg_rows_are_cond_then_uncond(name):
    """Qwen-Image and FLUX.1 with true CFG (a negative prompt): two calls per step, cond then uncond; the resolver
    gives the first n rows, which equal an unguided run's rows in the first step (same input)."""
    pipe, settings = tp.build(name), dict(tp.SETTINGS[name][0], num_inference_steps=2, output_type="latent")
    guided = dict(negative_prompt=["a cat"] * 2, true_cfg_scale=4.0)
    with helpers.record(pipe) as rec:
        pipe(prompt=tp.PROMPTS, **settings, **guided, generator=helpers.generators(2))
    with helpers.record(pipe) as plain:
        pipe(prompt=tp.PROMPTS, **settings, generator=helpers.generators(2))
    assert rec.calls == [[2, 2], [2, 2]] and rec.conditional_rows(2) == [0, 1] and plain.conditional_rows(2) == [0, 1]
    torch.testing.assert_close(rec.mean[0][:, :2], plain.mean[0])
    assert not torch.allclose(rec.mean[0][:, 2:], plain.mean[0])
    np.testing.assert_array_equal(helpers.conditional_rows("batched", [4], 2), [2, 3])
