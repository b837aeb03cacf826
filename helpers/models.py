"""Which models the book runs on, and where their residual stream and image tokens are.

``ARCHITECTURES`` says, per diffusers transformer class, which block lists form the residual stream (in the order
the forward pass runs them) and where the image tokens sit in each block's output. Adding a model is one entry.
``load_pipeline(name)`` loads a pipeline by a friendly name; ``residual_blocks(pipe)`` lists the hookable blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

#: Image tokens are ``output[1]`` of a block returning ``(text_tokens, image_tokens)`` (double-stream, MMDiT).
SEPARATE = "separate"
#: Image tokens are ``output[:, n_text:]`` of a block returning one ``[text; image]`` sequence (single-stream);
#: ``n_text`` is the length of the ``encoder_hidden_states`` the transformer was called with.
CONCATENATED = "concatenated"
#: The block's output is the image tokens alone (cross-attention DiTs: text enters through cross-attention).
IMAGE_ONLY = "image_only"
TOKEN_RULES = (SEPARATE, CONCATENATED, IMAGE_ONLY)


@dataclass(frozen=True)
class Architecture:
    """The residual stream of one transformer class: ``blocks`` is ``((attribute, token_rule), ...)`` in forward
    order, e.g. ``(("transformer_blocks", SEPARATE), ("single_transformer_blocks", SEPARATE))``."""

    blocks: tuple[tuple[str, str], ...]
    models: tuple[str, ...] = ()  # friendly names in MODELS that use this class


ARCHITECTURES: dict[str, Architecture] = {
    # Flux single blocks take text and image apart and return them apart, so both lists are SEPARATE.
    "FluxTransformer2DModel": Architecture(
        (("transformer_blocks", SEPARATE), ("single_transformer_blocks", SEPARATE)),
        ("flux.1-dev", "flux.1-schnell", "shapes")),
    # Flux2 single blocks run on the concatenated [text; image] sequence and return it whole.
    "Flux2Transformer2DModel": Architecture(
        (("transformer_blocks", SEPARATE), ("single_transformer_blocks", CONCATENATED)), ("flux.2-klein",)),
    "QwenImageTransformer2DModel": Architecture((("transformer_blocks", SEPARATE),), ("qwen-image",)),
    # The last SD3 block is context_pre_only: it returns (None, image_tokens).
    "SD3Transformer2DModel": Architecture((("transformer_blocks", SEPARATE),), ("sd3.5-medium",)),
    "SanaTransformer2DModel": Architecture((("transformer_blocks", IMAGE_ONLY),), ("sana-1.5",)),
    "PixArtTransformer2DModel": Architecture((("transformer_blocks", IMAGE_ONLY),), ("pixart-sigma",)),
}


class HubModel(NamedTuple):
    hub_id: str
    pipeline: str  # diffusers pipeline class name
    gated: bool  # the licence must be accepted on the Hugging Face hub (and a token given) before downloading
    guidance: str  # where classifier-free guidance puts the rows of a denoising step (see activations.record)


#: Friendly name -> hub checkpoint. ``guidance`` tells how the rows of one denoising step are laid out.
MODELS: dict[str, HubModel] = {
    "flux.1-schnell": HubModel("black-forest-labs/FLUX.1-schnell", "FluxPipeline", False,
                               "distilled: one call per step, rows = prompts"),
    "flux.1-dev": HubModel("black-forest-labs/FLUX.1-dev", "FluxPipeline", True,
                           "guidance-distilled: one call per step (true_cfg_scale > 1 adds an uncond call: "
                           "rows = [cond, uncond])"),
    "flux.2-klein": HubModel("black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline", False,
                             "distilled: one call per step (base models with CFG: two calls, rows = [cond, uncond])"),
    "qwen-image": HubModel("Qwen/Qwen-Image", "QwenImagePipeline", False,
                           "true CFG: two calls per step, rows = [cond, uncond]"),
    "sana-1.5": HubModel("Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "SanaPipeline", False,
                         "batched CFG: one call per step, rows = [uncond, cond]"),
    "sd3.5-medium": HubModel("stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline", True,
                             "batched CFG: one call per step, rows = [uncond, cond]"),
    "pixart-sigma": HubModel("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArtSigmaPipeline", False,
                             "batched CFG: one call per step, rows = [uncond, cond]"),
}
SHAPES_GUIDANCE = "guidance_scale > 1: batched CFG, rows = [uncond, cond]; else rows = prompts"


class Block(NamedTuple):
    name: str  # e.g. "single_transformer_blocks.3"
    module: torch.nn.Module
    token_rule: str  # SEPARATE, CONCATENATED or IMAGE_ONLY


def transformer_of(pipe_or_transformer) -> torch.nn.Module:
    """The denoising transformer of a pipeline (or the transformer itself)."""
    return getattr(pipe_or_transformer, "transformer", pipe_or_transformer)


def architecture(pipe_or_transformer) -> Architecture:
    """The table entry for this pipeline's transformer; a clear error for classes not in the table."""
    transformer = transformer_of(pipe_or_transformer)
    name = type(transformer).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"unsupported transformer class {name!r}; supported: {sorted(ARCHITECTURES)}. "
                         "Add an entry to helpers.models.ARCHITECTURES to support it.")
    return ARCHITECTURES[name]


def residual_blocks(pipe_or_transformer) -> list[Block]:
    """The blocks that form the residual stream, in forward order, each with its image-token rule."""
    transformer = transformer_of(pipe_or_transformer)
    return [Block(f"{attr}.{i}", module, rule)
            for attr, rule in architecture(transformer).blocks
            for i, module in enumerate(getattr(transformer, attr))]


def hidden_width(pipe_or_transformer) -> int:
    """Channels of the residual stream (the transformer's inner width)."""
    config = transformer_of(pipe_or_transformer).config
    return config.num_attention_heads * config.attention_head_dim


def load_pipeline(name: str, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  cpu_offload: bool = False, **from_pretrained_kwargs):
    """Load a pipeline by friendly name: "shapes" (the bundled book model, on CPU unless ``device`` says otherwise)
    or one of ``MODELS`` from the Hugging Face hub.

    ``dtype`` defaults to bfloat16 for hub models; ``device`` to CUDA when available; ``cpu_offload=True`` keeps
    only the running component on the GPU (``enable_model_cpu_offload``), for GPUs with little memory.
    """
    if name == "shapes":
        from .shapes import load_shapes_pipeline
        pipe = load_shapes_pipeline()
        return pipe.to(device=device or "cpu", dtype=dtype) if (device or dtype) else pipe
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {['shapes', *MODELS]}")
    import diffusers
    from diffusers.pipelines import pipeline_utils

    entry = MODELS[name]
    dtype_key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"  # newer diffusers: dtype=
    try:
        pipe = getattr(diffusers, entry.pipeline).from_pretrained(
            entry.hub_id, **{dtype_key: dtype or torch.bfloat16}, **from_pretrained_kwargs)
    except Exception as err:  # no network, not in the cache, licence not accepted, no token, ...
        gated = [n for n, m in MODELS.items() if m.gated]
        licence = (f"{name} is gated: accept its licence at https://huggingface.co/{entry.hub_id} and log in "
                   "(`hf auth login`) first. " if entry.gated else "")
        raise RuntimeError(
            f"could not load {name!r} ({entry.hub_id}) with diffusers.{entry.pipeline}: {type(err).__name__}: "
            f"{err}\n{licence}Real models need network access to the Hugging Face hub (or a local cache); models "
            f"whose licence must be accepted on the hub first: {gated}. The bundled model loads offline: "
            "load_pipeline('shapes').") from err
    if cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return pipe
