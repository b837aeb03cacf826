"""The book model: a text-to-image diffusers pipeline for the shapes world.

Real ecosystem parts, small: a ``FluxTransformer2DModel`` (double- and single-stream blocks, as in FLUX.1)
denoising 32x32 RGB images in pixel space, packed into 4x4 patches (64 image tokens of 48 values); a tiny
``CLIPTextModel`` over a word-level tokenizer of the caption grammar; ``FlowMatchEulerDiscreteScheduler``
(rectified flow). It saves with ``save_pretrained`` and loads offline with ``from_pretrained``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .world import CANVAS, VOCABULARY

PATCH = 4
SPECIAL = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]  # EOS must not be id 2: CLIP's legacy pooling would misfire
MAX_TOKENS = 16


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the caption grammar: [BOS] words [EOS], padded to 16 tokens."""
    vocab = {w: i for i, w in enumerate(SPECIAL + list(VOCABULARY))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=MAX_TOKENS,
    )


def build_components(width: int = 128, heads: int = 4, double: int = 3, single: int = 3, text_width: int = 128,
                     text_layers: int = 2) -> dict:
    """Fresh, randomly initialised components of a shapes pipeline (the training starting point)."""
    tokenizer = build_tokenizer()
    head_dim = width // heads
    rope = (head_dim - 2 * (3 * head_dim // 8), 3 * head_dim // 8, 3 * head_dim // 8)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=3 * PATCH * PATCH, out_channels=3 * PATCH * PATCH, num_layers=double,
        num_single_layers=single, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=text_width, pooled_projection_dim=text_width, guidance_embeds=False, axes_dims_rope=rope,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
        num_hidden_layers=text_layers, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=text_width,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return dict(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, 32, 32) -> (B, 64, 48): 4x4 patches in raster order, as Flux packs its latents."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, height: int = CANVAS, width: int = CANVAS) -> torch.Tensor:
    """(B, 64, 48) -> (B, 3, 32, 32), the inverse of ``pack``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // PATCH, width // PATCH, 3, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, height, width)


def image_to_latents(images) -> torch.Tensor:
    """(B, 32, 32, 3) images in [0, 1] (numpy or torch) -> the pipeline's packed latents (B, 64, 48) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images, np.float32))
    if x.ndim != 4 or tuple(x.shape[1:]) != (CANVAS, CANVAS, 3):
        raise ValueError(f"images must have shape (B, {CANVAS}, {CANVAS}, 3), got {tuple(x.shape)}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("images must hold finite values in [0, 1]; convert uint8 with x / 255, [-1, 1] with "
                         "(x + 1) / 2")
    return pack(x.permute(0, 3, 1, 2) * 2 - 1)


def latents_to_image(latents: torch.Tensor) -> np.ndarray:
    """Packed latents (B, 64, 48) -> (B, 32, 32, 3) images in [0, 1], as the pipeline decodes them."""
    return ((unpack(latents.float()) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def image_ids(height: int = CANVAS, width: int = CANVAS) -> torch.Tensor:
    """Rotary position ids (row, column) of the image tokens, as FLUX.1 builds them."""
    ids = torch.zeros(height // PATCH, width // PATCH, 3)
    ids[..., 1] = torch.arange(height // PATCH)[:, None]
    ids[..., 2] = torch.arange(width // PATCH)[None, :]
    return ids.reshape(-1, 3)


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image for the shapes world: ``pipe(prompt=[...], num_inference_steps=20).images``."""

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, transformer: FluxTransformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast, world: int = 1):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        self.register_to_config(world=world)  # the shapes world it was trained on (1: flat, 2: unnamed content)

    @property
    def world(self) -> int:
        return int(self.config.get("world", 1))

    def check_prompt(self, prompt: list[str]) -> None:
        """Every word must be in the caption vocabulary; the error names the unknown words and the known ones."""
        known = set(self.tokenizer.get_vocab()) - set(SPECIAL)
        for p in prompt:
            if not isinstance(p, str):
                raise TypeError(f"prompts must be strings, got {type(p).__name__}")
            unknown = [w for w in p.lower().split() if w not in known]
            if unknown:
                raise ValueError(f"unknown word(s) {unknown} in prompt {p!r}; the shapes model knows: {sorted(known)}")
            if len(p.split()) + 2 > MAX_TOKENS:
                raise ValueError(f"prompt {p!r} is longer than {MAX_TOKENS - 2} words")

    def encode_prompt(self, prompt: str | list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (per-token embeddings (B, 16, D), pooled embedding (B, D))."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompt:
            raise ValueError("the prompt list is empty: give at least one prompt")
        self.check_prompt(prompt)
        device = device or self._execution_device
        ids = self.tokenizer([p.lower() for p in prompt], padding="max_length", max_length=MAX_TOKENS,
                             return_tensors="pt").input_ids.to(device)
        out = self.text_encoder(input_ids=ids)
        return out.last_hidden_state, out.pooler_output

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = CANVAS,
        width: int = CANVAS,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate images. ``output_type``: "pil" (list of PIL), "np" ((B, 32, 32, 3) floats in [0, 1]),
        "pt" ((B, 3, 32, 32) in [0, 1]) or "latent" (packed tokens in [-1, 1]).

        ``guidance_scale`` other than 1 turns on classifier-free guidance against the empty caption (the model
        was trained with caption dropout): 1 is a plain conditional sample, 0 an unconditional one.
        """
        if (height, width) != (CANVAS, CANVAS):
            raise ValueError(f"the shapes model draws {CANVAS}x{CANVAS} images; got height={height}, width={width}")
        if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        bad = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if bad:
            raise ValueError(f"callback tensor inputs {sorted(bad)} not in {self._callback_tensor_inputs}")
        if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) or not (
                np.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got {guidance_scale!r}")
        device = self._execution_device
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds (with pooled_prompt_embeds), not both")
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass a prompt (or prompt_embeds and pooled_prompt_embeds)")
            prompt_embeds, pooled_prompt_embeds = self.encode_prompt(prompt, device)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds needs pooled_prompt_embeds as well")
        batch = prompt_embeds.shape[0]
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} prompts: give one per prompt (or one for all)")
        dtype = self.transformer.dtype
        prompt_embeds, pooled_prompt_embeds = prompt_embeds.to(device, dtype), pooled_prompt_embeds.to(device, dtype)
        do_cfg = guidance_scale != 1.0
        if do_cfg:
            neg, neg_pooled = self.encode_prompt([""] * batch, device)
            prompt_embeds = torch.cat([neg.to(dtype), prompt_embeds])
            pooled_prompt_embeds = torch.cat([neg_pooled.to(dtype), pooled_prompt_embeds])

        if latents is None:
            noise = randn_tensor((batch, 3, height, width), generator=generator, device=torch.device("cpu"),
                                 dtype=torch.float32)
            latents = pack(noise).to(device, dtype)
        elif latents.shape != (batch, (height // PATCH) * (width // PATCH), 3 * PATCH * PATCH):
            raise ValueError(f"latents must have shape {(batch, 64, 48)}, got {tuple(latents.shape)}")
        elif not torch.isfinite(latents).all():
            raise ValueError("latents contain NaN or infinite values")
        img_ids = image_ids(height, width).to(device, dtype)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)

        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            velocity = self.transformer(
                hidden_states=model_input, encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled_prompt_embeds, timestep=(t / 1000).expand(model_input.shape[0]).to(dtype),
                img_ids=img_ids, txt_ids=txt_ids, return_dict=False,
            )[0]
            if do_cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = locals()
                callback_kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = outputs.pop("latents", latents)

        self.maybe_free_model_hooks()
        if output_type == "latent":
            images = latents
        else:
            images = ((unpack(latents.float(), height, width) + 1) / 2).clamp(0, 1)
            if output_type != "pt":
                images = images.permute(0, 2, 3, 1).cpu().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
