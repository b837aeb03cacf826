"""Tiny, randomly initialised *real* diffusers pipelines of every architecture in ``helpers.ARCHITECTURES``, built
from configs only (no download): the pipeline class a reader loads, tiny random text encoders behind an in-memory
word-level tokenizer, a tiny VAE of the pipeline's own class and the scheduler class the hub checkpoint ships with.

``build(name, dtype)`` caches one pipeline per (name, dtype) for the whole test session (contexts leave no state
behind, which the tests check). ``capture(pipe)`` is an independent capture of every block's output, written here
rather than taken from helpers, so the tests can compare what helpers records and changes against it.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import numpy as np
import PIL.Image
import torch

WORDS = sorted(set(("a photo of red car on city street corgi the beach at sunset cat sofa lighthouse cliff bowl "
                    "fruit table blue white mug desk black system describe image by detailing color shape size "
                    "texture quantity text spatial relationships objects and background user assistant").split()))
SPECIAL = ["<pad>", "<unk>", "</s>", "<s>", "<|im_start|>", "<|im_end|>"]
VOCAB = {w: i for i, w in enumerate(SPECIAL + WORDS + ["\n", ",", ":", "."])}
EOS = VOCAB["</s>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ["a photo of a red car on a city street", "a corgi on the beach at sunset"]


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
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
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


def flux_transformer():
    from diffusers import FluxTransformer2DModel
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=16, axes_dims_rope=(4, 6, 6)).eval()


def flux2_transformer(guidance: bool = False):
    from diffusers import Flux2Transformer2DModel
    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                   timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance).eval()


def qwen_transformer():
    from diffusers import QwenImageTransformer2DModel
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                       axes_dims_rope=(8, 4, 4)).eval()


def qwen_vae():
    from diffusers import AutoencoderKLQwenImage
    return AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                                  latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()


def qwen_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                           shift_terminal=0.02, time_shift_type="exponential")  # as Qwen-Image


def flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=kl_vae(2, shift_factor=0.1),
                        text_encoder=clip(), tokenizer=tokenizer(77), text_encoder_2=t5(16),
                        tokenizer_2=tokenizer(512), transformer=flux_transformer())


def flux2_klein():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM
    # The pipeline stacks the text encoder's hidden states 9, 18 and 27: 27 (tiny) layers.
    text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=16,
                                                num_hidden_layers=27, num_attention_heads=2, num_key_value_heads=1,
                                                head_dim=8, max_position_embeddings=1024, bos_token_id=None,
                                                eos_token_id=None, pad_token_id=0)).eval()
    vae = kl_vae(2, cls=AutoencoderKLFlux2, use_quant_conv=False, use_post_quant_conv=False)
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer(512, eos=False, chat=True), transformer=flux2_transformer(),
                              is_distilled=True)  # FLUX.2-klein-4B is step-distilled: one call per step


def qwen():
    from diffusers import QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    v = len(VOCAB)
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=v + 3, bos_token_id=None, eos_token_id=None,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        hidden_size=16, vocab_size=v + 3, vision_start_token_id=v, vision_end_token_id=v + 1, image_token_id=v + 2,
        video_token_id=v + 2, bos_token_id=None, eos_token_id=None)
    return QwenImagePipeline(scheduler=qwen_scheduler(), vae=qwen_vae(),
                             text_encoder=Qwen2_5_VLForConditionalGeneration(config).eval(),
                             tokenizer=tokenizer(1024, eos=False), transformer=qwen_transformer())


def sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=32, pooled_projection_dim=32, out_channels=4).eval()
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=kl_vae(2, shift_factor=0.1), text_encoder=clip(True), tokenizer=tokenizer(77),
                                    text_encoder_2=clip(True), tokenizer_2=tokenizer(77), text_encoder_3=t5(32),
                                    tokenizer_3=tokenizer(256))


def sana():
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


def pixart():
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


# --- pipelines that append reference-image tokens after the generated image's (prompt embeddings given) ----------

def flux_kontext():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
    return FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=kl_vae(2, shift_factor=0.1),
                               text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                               transformer=flux_transformer())


def flux2_dev():
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    vae = kl_vae(2, cls=AutoencoderKLFlux2, use_quant_conv=False, use_post_quant_conv=False)
    return Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=flux2_transformer(guidance=True))


def qwen_edit(plus: bool = False):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(scheduler=qwen_scheduler(), vae=qwen_vae(), text_encoder=None, tokenizer=None, processor=None,
               transformer=qwen_transformer())


BUILDERS = {"FluxTransformer2DModel": flux, "Flux2Transformer2DModel": flux2_klein,
            "QwenImageTransformer2DModel": qwen, "SD3Transformer2DModel": sd3, "SanaTransformer2DModel": sana,
            "PixArtTransformer2DModel": pixart, "FluxKontextPipeline": flux_kontext, "Flux2Pipeline": flux2_dev,
            "QwenImageEditPipeline": qwen_edit, "QwenImageEditPlusPipeline": functools.partial(qwen_edit, True)}

#: How the chapters would call each of the six (short text sequences to keep the tiny encoders fast): pipeline
#: arguments, image tokens per row at that resolution, rows per prompt in a step (2 with batched guidance).
SETTINGS = {
    "FluxTransformer2DModel": (dict(height=32, width=32, guidance_scale=0.0, max_sequence_length=16), 64, 1),
    "Flux2Transformer2DModel": (dict(height=32, width=32, max_sequence_length=16), 64, 1),
    "QwenImageTransformer2DModel": (dict(height=32, width=32), 64, 1),
    "SD3Transformer2DModel": (dict(height=32, width=32, max_sequence_length=16), 64, 2),  # CFG at its default 7
    "SanaTransformer2DModel": (dict(height=512, width=512, max_sequence_length=16, complex_human_instruction=None,
                                    clean_caption=False), 256, 2),  # binned to its 512 table
    "PixArtTransformer2DModel": (dict(height=256, width=256, max_sequence_length=16, clean_caption=False), 256, 2),
}
SIX = list(SETTINGS)


@functools.cache
def build(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    pipe = BUILDERS[name]().to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_image(side: int = 64) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


def hook_counts(pipe) -> int:
    """Forward hooks and pre-hooks anywhere in the transformer."""
    transformer = getattr(pipe, "transformer", pipe)
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in transformer.modules())


def scheduler_clean(pipe) -> bool:
    """No wrapper left on the scheduler."""
    return not {"step", "set_timesteps"} & set(vars(pipe.scheduler))


def blocks_of(transformer) -> list[torch.nn.Module]:
    """The residual blocks in forward order, listed here by hand (not from helpers)."""
    return [*transformer.transformer_blocks, *getattr(transformer, "single_transformer_blocks", [])]


def image_and_text(name: str, block: int, output, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(all image tokens, text tokens or None) of a block's output, by hand per architecture: FLUX.2's single blocks
    return the concatenated [text; image] sequence, the others (text, image) pairs or image tokens alone."""
    if isinstance(output, tuple):
        return output[1], output[0]
    if name in ("SanaTransformer2DModel", "PixArtTransformer2DModel"):
        return output, None
    n_text = kwargs["encoder_hidden_states"].shape[1]
    return output[:, n_text:], output[:, :n_text]


@contextmanager
def capture(pipe):
    """Every block's output per transformer call (``calls[i][b]``, cloned), as the rest of the network sees it, and
    each call's keyword arguments (``kwargs[i]``). Registered by the test itself; removed with the context."""
    calls, kwargs, handles = [], [], []
    transformer = getattr(pipe, "transformer", pipe)

    def before(module, args, kw):
        calls.append({})
        kwargs.append(kw)

    def after(b, module, args, output):
        calls[-1][b] = tuple(o if o is None else o.clone() for o in output) if isinstance(output, tuple) else (
            output.clone())
    handles.append(transformer.register_forward_pre_hook(before, with_kwargs=True))
    for b, block in enumerate(blocks_of(transformer)):
        handles.append(block.register_forward_hook(functools.partial(after, b)))
    try:
        yield calls, kwargs
    finally:
        for h in handles:
            h.remove()
