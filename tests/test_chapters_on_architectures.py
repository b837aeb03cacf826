"""Chapters 1-5 on every architecture: the one-line model switch (``MODEL = "sd3.5-medium"``, ...) must not fail for
a reason other than weights.

For every transformer class in ``helpers.ARCHITECTURES`` this builds, from configs only (no download, nothing from the
hub), a tiny randomly initialised *real* diffusers pipeline of the class a reader loads -- FluxPipeline,
Flux2KleinPipeline, QwenImagePipeline, SanaPipeline, StableDiffusion3Pipeline, PixArtSigmaPipeline -- with tiny
random text encoders behind an in-memory word-level tokenizer, a tiny VAE of the pipeline's own class and the
scheduler class the hub checkpoint ships with. Generations take ``prompt=[...]`` strings, as the chapters do, at the
chapters' default guidance (batched classifier-free guidance for SD3, SANA and PixArt; none for FLUX.1-schnell,
FLUX.2-klein and Qwen-Image without a negative prompt).

Then every chapter's measurement functions run the way the chapters call them, and the results are checked: shapes,
finite values, that interventions change the images and plain runs do not, that cached transport equals lockstep
transport, and that no hook is left behind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

import helpers
from helpers import clustering as cl
from helpers import disruption as dr
from helpers import inversion as inv
from helpers import observe as ob
from helpers import transport as tr

STEPS = 3        # enough for step_ranges' early / middle / late
STEP = STEPS // 2
PROMPTS = ["a photo of a red car on a city street", "a corgi on the beach at sunset"]
CALIBRATION = ["a photo of a cat on a sofa", "a lighthouse on a cliff", "a bowl of fruit on a table"]
SOURCES = ["a red car on a city street", "a white mug on a desk"]
TARGETS = ["a blue car on a city street", "a black mug on a desk"]


# ------------------------------------------------------------------------------------------------ tiny components

QWEN_SYSTEM = ("system describe the image by detailing the color shape size texture quantity text spatial "
               "relationships of the objects and background user assistant")
WORDS = sorted(set((" ".join(PROMPTS + CALIBRATION + SOURCES + TARGETS) + " " + QWEN_SYSTEM).lower().split()))
SPECIAL = ["<pad>", "<unk>", "</s>", "<s>", "<|im_start|>", "<|im_end|>"]
VOCAB = {w: i for i, w in enumerate(SPECIAL + WORDS + ["\n", ",", ":", "."])}
EOS = VOCAB["</s>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer(max_length: int, eos: bool = True, chat: bool = False):
    """An in-memory word-level tokenizer (unknown words -> <unk>). Newlines are tokens, so Qwen-Image's system prompt
    is 34 tokens, as with the real Qwen tokenizer (the pipeline drops its first 34)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
                                               pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="isolated")])
    if eos:  # CLIP pools at the end-of-text token; T5 ends with </s>
        t.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                  bos_token="<s>", model_max_length=max_length, additional_special_tokens=SPECIAL[4:])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def clip(projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=16, projection_dim=16,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            eos_token_id=EOS, bos_token_id=VOCAB["<s>"], pad_token_id=0)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5(d_model: int):
    from transformers import T5Config, T5EncoderModel
    return T5EncoderModel(T5Config(vocab_size=len(VOCAB), d_model=d_model, d_kv=8, d_ff=16, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8)).eval()


def kl_vae(stages: int, cls=None, **kwargs):
    """A tiny AutoencoderKL-like VAE that downsamples 2 ** (stages - 1) times, with 4 latent channels."""
    from diffusers import AutoencoderKL
    return (cls or AutoencoderKL)(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * stages,
                                  up_block_types=("UpDecoderBlock2D",) * stages, block_out_channels=(4,) * stages,
                                  layers_per_block=1, norm_num_groups=2, latent_channels=4, **kwargs).eval()


def flux_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=kl_vae(2, shift_factor=0.1),  # as schnell
                        text_encoder=clip(), tokenizer=tokenizer(77), text_encoder_2=t5(16),
                        tokenizer_2=tokenizer(512), transformer=transformer)


def flux2_pipe():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM
    # The pipeline stacks the text encoder's hidden states 9, 18 and 27: 27 (tiny) layers.
    text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=16,
                                                num_hidden_layers=27, num_attention_heads=2, num_key_value_heads=1,
                                                head_dim=8, max_position_embeddings=1024, bos_token_id=None,
                                                eos_token_id=None, pad_token_id=0)).eval()
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=False).eval()
    vae = kl_vae(2, cls=AutoencoderKLFlux2, use_quant_conv=False, use_post_quant_conv=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer(512, eos=False, chat=True), transformer=transformer,
                              is_distilled=True)  # FLUX.2-klein-4B is step-distilled: one call per step


def qwen_pipe():
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from diffusers import QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    v = len(VOCAB)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=v + 3, bos_token_id=None, eos_token_id=None,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        hidden_size=16, vocab_size=v + 3, vision_start_token_id=v, vision_end_token_id=v + 1, image_token_id=v + 2,
        video_token_id=v + 2, bos_token_id=None, eos_token_id=None)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4)).eval()
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                shift_terminal=0.02, time_shift_type="exponential")  # as Qwen-Image
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    return QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer(1024, eos=False), transformer=transformer)


def sd3_pipe():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=32, out_channels=4).eval()
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=kl_vae(2, shift_factor=0.1), text_encoder=clip(True), tokenizer=tokenizer(77),
                                    text_encoder_2=clip(True), tokenizer_2=tokenizer(77), text_encoder_3=t5(32),
                                    tokenizer_3=tokenizer(256))


def sana_pipe():
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=len(VOCAB), hidden_size=8, head_dim=4, intermediate_size=16,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                            attn_implementation="eager")).eval()
    # sample_size 16: the pipeline bins every resolution into its 512-pixel aspect-ratio table.
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                         num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                                         cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=8,
                                         sample_size=16).eval()
    n = 6  # a 32x deep-compression autoencoder, as SANA's: 512 pixels -> 16 x 16 latents
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types="ResBlock",
                        decoder_block_types="ResBlock", encoder_block_out_channels=(4,) * n,
                        decoder_block_out_channels=(4,) * n, encoder_qkv_multiscales=((),) * n,
                        decoder_qkv_multiscales=((),) * n, encoder_layers_per_block=(1,) * n,
                        decoder_layers_per_block=(1,) * n, downsample_block_type="conv",
                        upsample_block_type="interpolate", scaling_factor=0.41407).eval()
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=3.0)  # SANA 1.5's scheduler: DPM-Solver on flow sigmas
    return SanaPipeline(tokenizer=tokenizer(300, eos=False), text_encoder=text_encoder, vae=vae,
                        transformer=transformer, scheduler=scheduler)


def pixart_pipe():
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    # sample_size 32: the pipeline bins every resolution into its 256-pixel aspect-ratio table.
    transformer = PixArtTransformer2DModel(sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=16, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False,
                                           norm_eps=1e-6).eval()
    return PixArtSigmaPipeline(tokenizer=tokenizer(300), text_encoder=t5(32), vae=kl_vae(4), transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())  # epsilon prediction: no flow inversion


@dataclass
class Arch:
    """A tiny pipeline and how the chapters would call it."""
    build: Callable
    settings: dict                      # the pipeline arguments the chapters pass (besides num_inference_steps)
    tokens: int                         # image tokens per row at that resolution
    guidance_rows: int = 1              # rows per prompt in a step: 2 with batched classifier-free guidance
    latents: tuple | None = None        # shape of one row of the pipeline's latents= (None: not a flow model)
    blocks: int = 0
    pipe: object = field(default=None, repr=False)

    def cond(self, n: int) -> list[int]:
        """The rows of the n prompts in a step: [uncond, cond] with batched guidance."""
        return list(range((self.guidance_rows - 1) * n, self.guidance_rows * n))


ARCHS = {
    "FluxTransformer2DModel": Arch(flux_pipe, dict(height=32, width=32, guidance_scale=0.0), 64,
                                   latents=(64, 16)),
    "Flux2Transformer2DModel": Arch(flux2_pipe, dict(height=32, width=32), 64, latents=(16, 8, 8)),
    "QwenImageTransformer2DModel": Arch(qwen_pipe, dict(height=32, width=32), 64, latents=(64, 16)),
    "SD3Transformer2DModel": Arch(sd3_pipe, dict(height=32, width=32), 64, guidance_rows=2, latents=(4, 16, 16)),
    "SanaTransformer2DModel": Arch(sana_pipe, dict(height=512, width=512), 256, guidance_rows=2,
                                   latents=(4, 16, 16)),
    "PixArtTransformer2DModel": Arch(pixart_pipe, dict(height=256, width=256), 256, guidance_rows=2),
}


def test_every_architecture_has_a_pipeline():
    assert set(ARCHS) == set(helpers.ARCHITECTURES)


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request) -> Arch:
    spec = ARCHS[request.param]
    torch.manual_seed(0)
    pipe = spec.build()
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.transformer).__name__ == request.param
    spec.pipe, spec.blocks = pipe, len(helpers.residual_blocks(pipe))
    yield spec
    spec.pipe = None


def hook_counts(pipe) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.transformer.modules())


def run(arch: Arch, **kwargs) -> dict:
    return {"num_inference_steps": STEPS, **arch.settings, **kwargs}


def assert_images(images, n: int, arch: Arch):
    images = np.asarray(images)
    assert images.shape == (n, arch.settings["height"], arch.settings["width"], 3)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


# ------------------------------------------------------------------------------------------------ chapter 1

@torch.no_grad()
def test_chapter1_observing(arch: Arch):
    pipe, n, width = arch.pipe, len(PROMPTS), helpers.hidden_width(arch.pipe)
    rec, images = ob.record_generation(pipe, PROMPTS, seed=0, keep_tokens={"steps": [STEP]}, **run(arch))
    assert_images(images, n, arch)
    rows = arch.guidance_rows * n
    assert rec.mean.shape == rec.abs_mean.shape == rec.abs_max.shape == (STEPS, arch.blocks, rows, width)
    assert torch.isfinite(rec.mean).all() and (rec.abs_max >= rec.abs_mean).all()
    assert rec.block_names == [b.name for b in helpers.residual_blocks(pipe)] and len(rec.timesteps) == STEPS
    assert set(rec.tokens) == {(STEP, b) for b in range(arch.blocks)}
    assert rec.tokens[STEP, 0].shape == (rows, arch.tokens, width)

    again, images2 = ob.record_generation(pipe, PROMPTS, seed=0, **run(arch))  # same seed: same recording
    torch.testing.assert_close(again.mean, rec.mean)
    np.testing.assert_array_equal(images2, images)

    stat = helpers.channel_statistic(rec, steps=[STEP])
    assert stat.shape == (arch.blocks, width) and torch.isfinite(stat).all()
    summary = ob.block_summary(stat, rec.block_names)
    assert len(summary) == arch.blocks and np.isfinite(summary.to_numpy(float)).all()
    assert list(summary.index) == ob.block_labels(rec.block_names)
    pers = ob.persistence_summary(rec, 4, STEP)
    assert len(pers) == arch.blocks and pers[["steps_jaccard", "prompts_jaccard"]].stack().between(0, 1).all()
    mats = ob.overlap_matrices(rec, 4, STEP, arch.blocks - 1)
    assert {k: tuple(v.shape) for k, v in mats.items()} == {
        "blocks": (arch.blocks,) * 2, "steps": (STEPS, STEPS), "prompts": (rows, rows)}
    ratios = ob.ratio_by_step(rec)
    assert ratios.shape == (STEPS, arch.blocks) and (ratios >= 1).all()
    freq = ob.frequency_by_block(rec, 4)
    torch.testing.assert_close(freq.sum(1), torch.full((arch.blocks,), 4.0))
    assert 0 < ob.chance_overlap(4, width) < 1

    assert ob.image_rows(rec, n) == arch.cond(n)  # the rows of the images: with guidance, the conditional half
    x = ob.token_magnitudes(rec, STEP, arch.blocks - 1, arch.cond(n)[0])
    assert x.shape == (arch.tokens, width)
    side = int(arch.tokens ** 0.5)
    assert ob.token_grid(x[:, 0]).shape == (side, side)
    # The chapter's static view and explorer take the recording, the images and the prompts as they come.
    import matplotlib.pyplot as plt
    fig = ob.profile_view(rec, images, PROMPTS, block=arch.blocks - 1, step=STEP, prompt=n - 1)
    plt.close(fig)
    assert ob.explore(rec, images, PROMPTS, block=0, step=STEP) is None  # unattended: no widget
    assert hook_counts(pipe) == 0


# ------------------------------------------------------------------------------------------------ chapter 2

@torch.no_grad()
def test_chapter2_disruption(arch: Arch):
    pipe, n, width = arch.pipe, len(PROMPTS), helpers.hidden_width(arch.pipe)
    names = dr.block_labels(pipe)
    assert len(names) == arch.blocks and len(set(names)) == arch.blocks
    stat = dr.calibration_statistic(pipe, CALIBRATION, seed=1, **run(arch))
    assert stat.shape == (arch.blocks, width) and torch.isfinite(stat).all()
    selections = dr.control_selections(stat, ks=[1, 2], n_random=1)
    table, images = dr.disruption_table(pipe, PROMPTS, selections, seed=0, return_images=True, **run(arch))
    assert list(table.index) == ["baseline", *selections]
    for name, ims in images.items():
        assert_images(ims, n, arch)
    assert table.loc["baseline", "pixel_change"] == 0
    assert (table.drop(index="baseline")["pixel_change"] > 0).all(), table
    np.testing.assert_array_equal(dr.generate_images(pipe, PROMPTS, 0, **run(arch)), images["baseline"])

    top = helpers.top_k(stat, 1)
    ranges = dr.step_ranges(STEPS)
    where = {**dr.block_conditions(top, [0, arch.blocks - 1], "top-1"), **dr.step_conditions(top, ranges, "top-1"),
             "x4": {"channels": top, "mode": "scale", "scale": 4.0}}
    restricted = dr.disruption_table(pipe, PROMPTS, where, seed=0, reference=images["baseline"], **run(arch))
    assert (restricted.drop(index="baseline")["pixel_change"] > 0).all(), restricted
    assert dr.condition_map(restricted, "pixel_change", rows="blocks", steps="all").shape == (2, 1)
    assert dr.condition_map(restricted, "pixel_change", rows="steps", blocks="all").shape == (3, 1)
    summary = dr.collapse_summary(table)
    assert list(summary.index) == [1, 2] and summary["collapsed"].isna().all()
    assert "top-2" in dr.collapse_sentence(table, 2)
    assert hook_counts(pipe) == 0


# ------------------------------------------------------------------------------------------------ chapter 3

@torch.no_grad()
def test_chapter3_clustering(arch: Arch):
    pipe, n, width = arch.pipe, len(PROMPTS), helpers.hidden_width(arch.pipe)
    steps, blocks = [1, STEPS - 1], [0, arch.blocks - 1]
    _, calib, _ = cl.generate_with_tokens(pipe, CALIBRATION, [], steps, seed=1, **run(arch))
    assert calib.tokens == {}
    massive = helpers.top_k(helpers.channel_statistic(calib), 2)
    images, rec, inputs = cl.generate_with_tokens(pipe, PROMPTS, blocks, steps, seed=0, keep_inputs=True,
                                                  **run(arch))
    assert_images(images, n, arch)
    tokens = rec.tokens
    assert set(tokens) == {(s, b) for s in steps for b in blocks}
    rows = arch.guidance_rows * n
    assert all(t.shape == (rows, arch.tokens, width) for t in tokens.values())
    assert set(inputs.inputs) == set(steps) and all(x.shape[0] == rows for x in inputs.inputs.values())
    grid = cl.grid_shape(arch.tokens)
    patch = images.shape[1] // grid[0]
    assert grid[0] * patch == images.shape[1]

    masks = cl.token_masks(tokens[steps[-1], blocks[-1]][arch.cond(n)], massive[blocks[-1]])
    assert masks.shape == (n, *grid) and masks.dtype == bool
    assert cl.token_mask_to_pixels(masks, patch).shape == (n, *images.shape[1:3])
    truth = np.zeros((n, *images.shape[1:3]), bool)
    truth[:, :, : images.shape[2] // 2] = True  # some object mask at pixel resolution
    table = cl.clustering_iou(tokens, truth, channels=massive, rows=arch.cond(n))
    assert len(table) == len(tokens) * n
    assert table[["iou", "iou_best", "token_iou"]].stack().between(0, 1).all()
    assert (table.iou_best >= table.iou).all()
    assert cl.iou_map(table).shape == (len(blocks), len(steps))
    on_inputs = cl.clustering_iou(inputs.inputs, truth, rows=arch.cond(n))
    assert len(on_inputs) == len(steps) * n and on_inputs.iou.between(0, 1).all()
    blob = cl.token_mask_to_pixels(cl.centred_blob(grid, 0.3), patch)
    assert np.all((cl.iou(blob, truth) >= 0) & (cl.iou(blob, truth) <= 1))
    assert hook_counts(pipe) == 0


# ------------------------------------------------------------------------------------------------ chapter 4

@torch.no_grad()
def test_chapter4_transport(arch: Arch):
    pipe, width = arch.pipe, helpers.hidden_width(arch.pipe)
    kw = run(arch)
    ranked = tr.massive_channels(pipe, CALIBRATION, k=width, **kw)
    assert ranked.shape == (arch.blocks, width)
    assert (ranked.sort(1).values == torch.arange(width)).all()  # every channel once, per block
    plain_src = tr.plain_generation(pipe, SOURCES, **kw)
    plain_tgt = tr.plain_generation(pipe, TARGETS, **kw)
    assert_images(plain_tgt, 2, arch)

    lock = tr.lockstep_transport(pipe, SOURCES, TARGETS, ranked[:, :4], mask="cluster", alpha=0.7, **kw)
    assert_images(lock.target, 2, arch)
    # Batching alone moves pixels by ~3e-7; one word's difference between source and target moves a tiny
    # Qwen-Image target by ~1e-4 (its 1-layer text encoder barely tells the words apart), the others' more.
    np.testing.assert_allclose(lock.source, plain_src, atol=1e-5)   # the sources run untouched
    assert np.abs(lock.target - plain_tgt).max() > 2e-5              # the targets move

    probe = tr.record_source(pipe, SOURCES, ranked[:, :4], blocks=[0], steps=[STEP], **kw)
    assert set(probe.values) == {(STEP, 0)} and probe.n_tokens == arch.tokens
    assert probe.values[STEP, 0].shape == (arch.guidance_rows * 2, arch.tokens, 4)
    assert tr.foreground_mask(probe.values[STEP, 0]).shape == (arch.guidance_rows * 2, arch.tokens)

    cache = tr.record_source(pipe, SOURCES, ranked[:, :4], **kw)
    np.testing.assert_allclose(cache.images, plain_src, atol=1e-5)
    cached = tr.cached_transport(pipe, cache, TARGETS, mask="cluster", alpha=0.7, **kw)
    np.testing.assert_allclose(cached, lock.target, atol=1e-4)       # cached = lockstep
    masks = tr.cluster_masks(cache, ranked[:, :2])
    assert set(masks) == set(cache.values)
    # Other noise for the targets (seeds 7, 8): a subset of the cached channels, blocks and masks moves them.
    subset = tr.cached_transport(pipe, cache, TARGETS, channels=ranked[:, :2], blocks=[0], mask=masks, seed=7, **kw)
    assert np.abs(subset - tr.plain_generation(pipe, TARGETS, seed=7, **kw)).max() > 1e-3

    every = torch.arange(width)
    share = tr.difference_share(tr.record_source(pipe, SOURCES, every, steps=[STEP], **kw),
                                tr.record_source(pipe, TARGETS, every, steps=[STEP], **kw), ranked[:, :2])
    assert ((share["difference"] >= 0) & (share["difference"] <= 1)).all()
    assert ((share["energy"] >= 0) & (share["energy"] <= 1)).all()

    # The chapter's real-model cell: channels from source and target, transport in the first half of the steps.
    top = tr.massive_channels(pipe, SOURCES[:1] + TARGETS[:1], k=4, **kw)
    real = tr.lockstep_transport(pipe, SOURCES[:1], TARGETS[:1], top, steps=range(STEPS // 2), mask="cluster", **kw)
    assert_images(real.target, 1, arch)
    assert hook_counts(pipe) == 0


# ------------------------------------------------------------------------------------------------ chapter 5

def reference_latents(arch: Arch, n: int) -> torch.Tensor:
    """Clean latents in the format of the pipeline's ``latents=`` argument (what encoding a photograph gives)."""
    return torch.randn(n, *arch.latents, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def test_chapter5_inversion_and_subject_transport(arch: Arch):
    pipe, n = arch.pipe, 1
    kw = dict(arch.settings)
    if arch.latents is None:  # not a flow-matching pipeline: a clear error, before anything runs
        with pytest.raises(ValueError, match=f"{type(pipe).__name__}.*not a flow-matching scheduler"):
            inv.invert(pipe, torch.randn(1, 4, 32, 32), num_inference_steps=STEPS, prompt=PROMPTS[:1], **kw)
        with pytest.raises(ValueError, match=f"{type(pipe.transformer).__name__}.*not a flow-matching scheduler"):
            inv.subject_transport(pipe, torch.randn(1, 4, 32, 32), PROMPTS[:1], TARGETS[:1], k=2,
                                  num_inference_steps=STEPS, **kw)
        assert hook_counts(pipe) == 0 and not isinstance(pipe.scheduler, inv.ReversedFlowScheduler)
        return
    latents = reference_latents(arch, n)
    scheduler = pipe.scheduler
    inversion = inv.invert(pipe, latents, num_inference_steps=STEPS, prompt=PROMPTS[:n], **kw)
    assert pipe.scheduler is scheduler
    assert inversion.noise.shape == latents.shape and torch.isfinite(inversion.noise).all()
    assert inversion.trajectory.shape == (n, STEPS + 1, *arch.latents)
    torch.testing.assert_close(inversion.trajectory[:, 0], latents)   # starts at the image, in latents= format
    assert inversion.sigmas[0] == 0 and inversion.sigmas[-1] <= 1 and (inversion.sigmas.diff() > 0).all()

    _, redrawn = inv.invert_and_regenerate(pipe, latents, num_inference_steps=STEPS, prompt=PROMPTS[:n], **kw)
    assert redrawn.shape == latents.shape and torch.isfinite(redrawn).all()  # comparable with the reference
    assert "step" not in vars(pipe.scheduler)  # the scheduler is left as it was

    out = inv.subject_transport(pipe, latents, PROMPTS[:n], TARGETS[:n], k=2, num_inference_steps=STEPS,
                                cache_channels="used", inversion=inversion, **kw)
    assert set(out.images) == {"no transport", "top-2", "random-2"}
    for images in out.images.values():
        assert_images(images, n, arch)
    assert_images(out.cache.images, n, arch)
    assert out.statistic.shape == (arch.blocks, helpers.hidden_width(pipe))
    assert out.channels["top-2"].shape == out.channels["random-2"].shape == (arch.blocks, 2)
    assert set(out.masks) == {(s, b) for s in range(STEPS) for b in range(arch.blocks)}
    assert all(m.shape == (arch.guidance_rows * n, arch.tokens) for m in out.masks.values())
    assert np.abs(out.images["top-2"] - out.images["no transport"]).max() > 1e-4
    # The target drawn without transport starts from the inverted noise: the same as a plain call from it.
    np.testing.assert_allclose(out.images["no transport"],
                               tr.plain_generation(pipe, TARGETS[:n], latents=inversion.noise,
                                                   num_inference_steps=STEPS, **kw), atol=1e-5)
    assert hook_counts(pipe) == 0 and pipe.scheduler is scheduler


# ------------------------------------------------------------------------------------------------ chapter 6

@torch.no_grad()
def test_chapter6_variance_and_conditioning(arch: Arch):
    """Section 1 on any model: the (prompt x noise) grid, its variance split and prompt average; the AdaLN
    conditioning where the transformer has FLUX/SD3's time_text_embed, a clear error elsewhere."""
    from contextlib import nullcontext

    from helpers import beyond as by
    pipe, kw = arch.pipe, run(arch)
    ranked = tr.massive_channels(pipe, CALIBRATION, k=4, **kw)
    rows, seeds = by.grid_rows(PROMPTS, [0, 1])
    embed = getattr(pipe.transformer, "time_text_embed", None)
    supported = embed is not None and hasattr(embed, "timestep_embedder") and hasattr(embed, "text_embedder")
    if not supported:
        with pytest.raises(TypeError, match=f"{type(pipe.transformer).__name__} has no FLUX/SD3-style"):
            by.record_conditioning(pipe)
    with (by.record_conditioning(pipe) if supported else nullcontext()) as conditioning:
        grid = tr.record_source(pipe, rows, ranked, seed=seeds, dtype=torch.float32, **kw)
    table = by.shares_table(grid, len(PROMPTS), 2, [0, 1], [f"b{i}" for i in range(arch.blocks)])
    assert table.shape[0] == arch.blocks and np.isfinite(table.to_numpy()).all()
    parts = table.drop(columns="constant").sum(axis=1)
    np.testing.assert_allclose(parts, 1.0, atol=1e-6)
    average = by.prompt_average(grid, len(PROMPTS), 2)
    assert average[STEP, 0].shape == (2, arch.tokens, 4)
    if supported:
        temb = conditioning.temb
        assert temb.shape[:2] == (STEPS, arch.guidance_rows * len(rows))
        assert by.modulation(pipe, temb, 0, 1).shape[:2] == temb.shape[:2]
    assert hook_counts(pipe) == 0


# ------------------------------------------------------------------------------------------------ two-call guidance

@torch.no_grad()
def test_true_cfg_rows_are_cond_then_uncond():
    """Qwen-Image with a negative prompt makes two transformer calls per step, cond then uncond: the recording has
    2n rows per step and the chapter-1 views show the conditional ones; transport pairs uncond with uncond."""
    spec = ARCHS["QwenImageTransformer2DModel"]
    torch.manual_seed(0)
    pipe = spec.build()
    pipe.set_progress_bar_config(disable=True)
    guided = dict(negative_prompt=[" "] * len(PROMPTS), true_cfg_scale=4.0)
    rec, images = ob.record_generation(pipe, PROMPTS, seed=0, **run(spec, **guided))
    assert rec.mean.shape[2] == 2 * len(PROMPTS) and rec.calls_per_step == [2] * STEPS
    assert ob.image_rows(rec, len(PROMPTS)) == [0, 1]
    only_cond, _ = ob.record_generation(pipe, PROMPTS, seed=0, **run(spec))
    torch.testing.assert_close(rec.mean[0, :, :len(PROMPTS)], only_cond.mean[0])  # first step: same input
    import matplotlib.pyplot as plt
    plt.close(ob.profile_view(rec, images, PROMPTS, block=0, step=0, prompt=1))
    assert hook_counts(pipe) == 0
