"""Every architecture in helpers.ARCHITECTURES on a tiny random config (built from config, no download).

For each: the recorded statistics equal those computed by hand from the block outputs; zeroing one channel of one
block changes exactly that channel of that block's image tokens and leaves its text tokens alone; and after the
contexts end the model's output equals a plain run. FLUX, SD3 and the shapes model go through their real pipelines'
denoising loops; the others through a loop of transformer calls like their pipelines make.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel, FluxPipeline,
                       FluxTransformer2DModel, PixArtTransformer2DModel, QwenImageTransformer2DModel,
                       SanaTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline)

import helpers

STEPS = 2


@dataclass
class Case:
    """A tiny model, a generation with it, and hand-written rules for where its tokens are."""
    transformer: torch.nn.Module
    generate: Callable[[], torch.Tensor]  # deterministic: the same output on every call
    image: Callable  # (block output, n_text) -> image tokens, written by hand per architecture
    text: Callable  # (block output, n_text) -> text tokens, or None where blocks hold image tokens only
    calls_per_step: int = 1
    n_text: int = 0


def tiny_vae(latent_channels: int) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         norm_num_groups=4, latent_channels=latent_channels, shift_factor=0.0).eval()


def flux_case() -> Case:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4), text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    embeds, pooled = torch.randn(2, 5, 32), torch.randn(2, 32)

    def generate():
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=16, width=16,
                    num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    return Case(pipe.transformer, generate, image=lambda o, n: o[1], text=lambda o, n: o[0], n_text=5)


def sd3_case() -> Case:
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4).eval()
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=tiny_vae(4), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    embeds, pooled = torch.randn(2, 6, 32), torch.randn(2, 64)
    negative, negative_pooled = torch.randn(2, 6, 32), torch.randn(2, 64)

    def generate():  # guidance_scale > 1: batched CFG, rows [uncond, uncond, cond, cond]
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=negative,
                    negative_pooled_prompt_embeds=negative_pooled, guidance_scale=3.0, height=16, width=16,
                    num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    # The last block is context_pre_only: its text output is None.
    return Case(pipe.transformer, generate, image=lambda o, n: o[1], text=lambda o, n: o[0], n_text=6)


def shapes_case() -> Case:
    from helpers.shapes import ShapesPipeline, build_components
    torch.manual_seed(0)
    pipe = ShapesPipeline(**build_components(width=32, heads=2, double=1, single=2, text_width=32, text_layers=1))
    pipe.set_progress_bar_config(disable=True)

    def generate():  # CFG: batched [uncond, cond]
        return pipe(prompt=["a big red circle on the left on a blue background", "a small green square"],
                    num_inference_steps=STEPS, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                    output_type="pt").images
    return Case(pipe.transformer, generate, image=lambda o, n: o[1], text=lambda o, n: o[0], n_text=16)


def loop(transformer, inputs: Callable[[float, int], dict], calls_per_step: int = 1) -> Callable:
    """A denoising loop of transformer calls (Euler steps, as the real pipelines make them)."""
    def generate():
        torch.manual_seed(1)
        latents = inputs(1.0, 0)["hidden_states"]
        for t in torch.linspace(1.0, 0.5, STEPS):
            outs = []
            for call in range(calls_per_step):
                kwargs = inputs(float(t), call)
                kwargs["hidden_states"] = latents
                outs.append(transformer(**kwargs, return_dict=False)[0])
            velocity = outs[0] if calls_per_step == 1 else outs[1] + 2.0 * (outs[0] - outs[1])
            latents = latents - 0.25 * velocity.reshape(latents.shape)
        return latents
    return generate


def flux2_case() -> Case:
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=2,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False).eval()
    x, text = torch.randn(2, 16, 8), torch.randn(2, 7, 32)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.zeros(1), torch.arange(4.), torch.arange(4.),
                                         indexing="ij"), -1).reshape(-1, 4)
    inputs = lambda t, call: dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.full((2,), t),
                                  img_ids=img_ids, txt_ids=torch.zeros(7, 4))
    # Double blocks return (text, image); single blocks return the concatenated [text; image] sequence.
    image = lambda o, n: o[1] if isinstance(o, tuple) else o[:, n:]
    text_ = lambda o, n: o[0] if isinstance(o, tuple) else o[:, :n]
    return Case(transformer, loop(transformer, inputs), image, text_, n_text=7)


def qwen_case() -> Case:
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4)).eval()
    x, cond, uncond = torch.randn(2, 16, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)

    def inputs(t, call):  # true CFG: a cond call, then an uncond call, with the same timestep
        return dict(hidden_states=x, encoder_hidden_states=(cond, uncond)[call],
                    encoder_hidden_states_mask=torch.ones(2, 5), timestep=torch.full((2,), t),
                    img_shapes=[(1, 4, 4)] * 2)
    return Case(transformer, loop(transformer, inputs, calls_per_step=2), image=lambda o, n: o[1],
                text=lambda o, n: o[0], calls_per_step=2, n_text=5)


def sana_case() -> Case:
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                         num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                         cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                                         sample_size=8).eval()
    x, text = torch.randn(2, 4, 4, 4), torch.randn(2, 5, 8)
    inputs = lambda t, call: dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.full((2,), 1000 * t))
    return Case(transformer, loop(transformer, inputs), image=lambda o, n: o, text=lambda o, n: None)


def pixart_case() -> Case:
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False,
                                           norm_eps=1e-6).eval()
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    inputs = lambda t, call: dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.full((2,), 1000 * t),
                                  added_cond_kwargs={"resolution": None, "aspect_ratio": None})

    def generate():  # PixArt predicts (noise, variance): keep the first half of the channels
        torch.manual_seed(1)
        latents = x
        for t in torch.linspace(1.0, 0.5, STEPS):
            kwargs = inputs(float(t), 0)
            kwargs["hidden_states"] = latents
            latents = latents - 0.25 * transformer(**kwargs, return_dict=False)[0][:, :4]
        return latents
    return Case(transformer, generate, image=lambda o, n: o, text=lambda o, n: None)


CASES = {"FluxTransformer2DModel": flux_case, "SD3Transformer2DModel": sd3_case,
         "Flux2Transformer2DModel": flux2_case, "QwenImageTransformer2DModel": qwen_case,
         "SanaTransformer2DModel": sana_case, "PixArtTransformer2DModel": pixart_case}


def test_every_architecture_has_a_case():
    assert set(CASES) == set(helpers.ARCHITECTURES)


@pytest.fixture(scope="module", params=[*CASES, "shapes"])
def case(request) -> Case:
    return shapes_case() if request.param == "shapes" else CASES[request.param]()


def capture(case: Case) -> tuple[list, list]:
    """Forward hooks (registered by the test itself) collecting every block output, per transformer call."""
    outputs: list[list] = []
    handles = [case.transformer.register_forward_pre_hook(lambda m, a: outputs.append([]))]
    for block in helpers.residual_blocks(case.transformer):
        handles.append(block.module.register_forward_hook(lambda m, a, o: outputs[-1].append(o)))
    return outputs, handles


def hook_counts(transformer) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in transformer.modules())


@torch.no_grad()
def test_recorded_statistics_equal_hand_computed(case: Case):
    outputs, handles = capture(case)
    try:
        with helpers.record(case.transformer, keep_tokens={"blocks": [0], "steps": [STEPS - 1]}) as rec:
            case.generate()
    finally:
        for h in handles:
            h.remove()
    blocks, width = helpers.residual_blocks(case.transformer), helpers.hidden_width(case.transformer)
    assert len(outputs) == STEPS * case.calls_per_step
    assert rec.block_names == [b.name for b in blocks]
    assert len(rec.timesteps) == STEPS
    # Per call, per block: image tokens by hand; the calls of one step are concatenated along the rows.
    images = [[case.image(o, case.n_text).float() for o in call] for call in outputs]
    per_step = [[torch.cat([images[s * case.calls_per_step + c][b] for c in range(case.calls_per_step)])
                 for b in range(len(blocks))] for s in range(STEPS)]
    rows = per_step[0][0].shape[0]
    assert rec.mean.shape == rec.abs_mean.shape == rec.abs_max.shape == (STEPS, len(blocks), rows, width)
    expect = {name: torch.stack([torch.stack([f(x) for x in step]) for step in per_step])
              for name, f in [("mean", lambda x: x.mean(1)), ("abs_mean", lambda x: x.abs().mean(1)),
                              ("abs_max", lambda x: x.abs().amax(1))]}
    for name, value in expect.items():
        torch.testing.assert_close(getattr(rec, name), value, rtol=1e-5, atol=1e-6, msg=name)
    assert set(rec.tokens) == {(STEPS - 1, 0)}
    torch.testing.assert_close(rec.tokens[STEPS - 1, 0], per_step[-1][0])


@torch.no_grad()
def test_zeroing_a_channel_changes_exactly_that_channel(case: Case):
    blocks = helpers.residual_blocks(case.transformer)
    plain_out = case.generate()
    outputs, handles = capture(case)
    case.generate()
    for h in handles:
        h.remove()
    channel = 3
    for b in sorted({0, len(blocks) - 1}):  # the first and last block: one of each kind in every architecture
        with helpers.intervene(case.transformer, channels=[channel], blocks=[b], mode="zero"):
            changed, handles = capture(case)  # registered after intervene's hooks: sees the changed output
            try:
                out = case.generate()
            finally:
                for h in handles:
                    h.remove()
        # In the first call every block before b saw the same input, so only block b's channel may differ.
        before, after = outputs[0][b], changed[0][b]
        x, y = case.image(before, case.n_text), case.image(after, case.n_text)
        keep = torch.arange(x.shape[-1]) != channel
        assert torch.equal(x[..., keep], y[..., keep]), f"block {b}: other channels changed"
        assert (y[..., channel] == 0).all() and (x[..., channel] != 0).any(), f"block {b}: channel not zeroed"
        tx, ty = case.text(before, case.n_text), case.text(after, case.n_text)
        assert (tx is None and ty is None) or torch.equal(tx, ty), f"block {b}: text tokens changed"
        assert not torch.equal(out, plain_out), f"block {b}: the rest of the network did not see the change"
    assert hook_counts(case.transformer) == 0


@torch.no_grad()
def test_output_identical_to_plain_run_after_the_contexts(case: Case):
    plain = case.generate()
    with helpers.record(case.transformer, keep_tokens={}):
        case.generate()
    with helpers.intervene(case.transformer, channels=[0, 1], mode="scale", scale=10.0):
        assert not torch.equal(case.generate(), plain)
    assert hook_counts(case.transformer) == 0
    assert torch.equal(case.generate(), plain)
