"""Which models the book runs on. ``MODELS[name]``: the hub checkpoint and pipeline class, how guidance lays out the
rows of a denoising step and what turns it on, the sampling settings every chapter uses, the memory the weights take.
``ARCHITECTURES[class name]``: which block lists form the residual stream and where the image tokens sit in each
block's output. Adding a model is one entry in each."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import diffusers
import torch

from .shapes import load_shapes_pipeline

#: Image tokens are ``output[1]`` of a block returning ``(text_tokens, image_tokens)`` (double-stream, MMDiT).
SEPARATE = "separate"
#: Image tokens are ``output[:, n_text:]`` of a block returning one ``[text; image]`` sequence (single-stream).
CONCATENATED = "concatenated"
#: The block's output is the image tokens alone (cross-attention DiTs: text enters through cross-attention).
IMAGE_ONLY = "image_only"

#: How the generated image's tokens are told from reference-image tokens that edit pipelines append after them
#: (FLUX.1 Kontext, FLUX.2, Qwen-Image-Edit): by the first position id (0 = generated), by ``img_shapes[0]``, or
#: every image token is generated.
FIRST_ID_ZERO, IMG_SHAPES, ALL_TOKENS = "first id zero", "img_shapes", "all"


@dataclass(frozen=True)
class Architecture:
    """The residual stream of one transformer class: ``blocks`` is ``((attribute, token_rule, label), ...)`` in
    forward order; ``label`` names the blocks in text and figures ("double 0", "single 2", "block 5")."""

    blocks: tuple[tuple[str, str, str], ...]
    generated: str = ALL_TOKENS


ARCHITECTURES: dict[str, Architecture] = {
    # Flux single blocks take text and image apart and return them apart, so both lists are SEPARATE.
    "FluxTransformer2DModel": Architecture(
        (("transformer_blocks", SEPARATE, "double"), ("single_transformer_blocks", SEPARATE, "single")),
        FIRST_ID_ZERO),
    # Flux2 single blocks run on the concatenated [text; image] sequence and return it whole.
    "Flux2Transformer2DModel": Architecture(
        (("transformer_blocks", SEPARATE, "double"), ("single_transformer_blocks", CONCATENATED, "single")),
        FIRST_ID_ZERO),
    "QwenImageTransformer2DModel": Architecture((("transformer_blocks", SEPARATE, "double"),), IMG_SHAPES),
    # The last SD3 block is context_pre_only: it returns (None, image_tokens).
    "SD3Transformer2DModel": Architecture((("transformer_blocks", SEPARATE, "double"),)),
    "SanaTransformer2DModel": Architecture((("transformer_blocks", IMAGE_ONLY, "block"),)),
    "PixArtTransformer2DModel": Architecture((("transformer_blocks", IMAGE_ONLY, "block"),)),
}

#: Row layouts of one denoising step. ``NONE``: rows = images (no guidance, or guidance distilled into the model);
#: ``BATCHED``: one call on ``[uncond; cond]``; ``TWO_CALLS``: a call on the cond rows, then one on the uncond rows.
NONE, BATCHED, TWO_CALLS = "none", "batched", "two calls"


@dataclass(frozen=True)
class Model:
    """One entry of ``MODELS``. ``guidance``: the row layout when guidance is on (``conditional_rows`` reads it);
    ``guidance_on``: the pipeline arguments that turn it on, all of them needed (a scale above 1; for true CFG also a
    ``negative_prompt``); ``settings``: what every chapter passes to the pipeline; ``weights_gib`` /
    ``largest_gib``: bfloat16 weights of all components / of the largest one (from ``tools/memory.py``)."""

    hub_id: str | None
    pipeline: str
    gated: bool
    guidance: str
    guidance_on: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    weights_gib: float = 0.0
    largest_gib: float = 0.0
    quantize: tuple[str, ...] = ()  # components loaded in 4-bit NF4 (diffusers + bitsandbytes)
    notes: str = ""


_FLUX_SMALL = dict(height=512, width=512, max_sequence_length=256)
MODELS: dict[str, Model] = {
    "shapes": Model(None, "ShapesPipeline", False, BATCHED, ("guidance_scale",),
                    dict(num_inference_steps=20), 0.01, 0.0,
                    notes="the bundled book model: CPU, offline"),
    "sana-1.5": Model("Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "SanaPipeline", False, BATCHED,
                      ("guidance_scale",), dict(num_inference_steps=20, guidance_scale=4.5, height=1024, width=1024),
                      8.44, 4.87, notes="fits a free Colab T4 (15 GiB) on the GPU"),
    "flux.1-schnell-4bit": Model("black-forest-labs/FLUX.1-schnell", "FluxPipeline", False, NONE, (),
                                 dict(num_inference_steps=4, guidance_scale=0.0, **_FLUX_SMALL), 10.64, 6.23,
                                 quantize=("transformer", "text_encoder_2"),
                                 notes="FLUX.1-schnell with the transformer and T5 in 4-bit: fits a T4"),
    "flux.1-schnell": Model("black-forest-labs/FLUX.1-schnell", "FluxPipeline", False, NONE, (),
                            dict(num_inference_steps=4, guidance_scale=0.0, **_FLUX_SMALL), 31.4, 22.15),
    "flux.1-dev": Model("black-forest-labs/FLUX.1-dev", "FluxPipeline", True, TWO_CALLS,
                        ("true_cfg_scale", "negative_prompt"),
                        dict(num_inference_steps=28, guidance_scale=3.5, **_FLUX_SMALL), 31.42, 22.17,
                        notes="guidance-distilled; true CFG only with true_cfg_scale > 1 and a negative_prompt"),
    "flux.2-klein": Model("black-forest-labs/FLUX.2-klein-4B", "Flux2KleinPipeline", False, NONE, (),
                          dict(num_inference_steps=4, height=512, width=512), 14.87, 7.49),
    "qwen-image": Model("Qwen/Qwen-Image", "QwenImagePipeline", False, TWO_CALLS,
                        ("true_cfg_scale", "negative_prompt"),
                        dict(num_inference_steps=30, true_cfg_scale=4.0, negative_prompt=" ", height=512, width=512),
                        53.74, 38.05, notes="true CFG only with a negative_prompt: the settings pass one"),
    "sd3.5-medium": Model("stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline", True, BATCHED,
                          ("guidance_scale",), dict(num_inference_steps=28, guidance_scale=4.5, height=512, width=512),
                          15.15, 8.87, notes="skip-layer guidance adds a call on the cond rows in some steps"),
    "pixart-sigma": Model("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "PixArtSigmaPipeline", False, BATCHED,
                          ("guidance_scale",),
                          dict(num_inference_steps=20, guidance_scale=4.5, height=1024, width=1024), 10.17, 8.87,
                          notes="ignores callback_on_step_end"),
}


class Block(NamedTuple):
    name: str  # e.g. "single_transformer_blocks.3"
    label: str  # e.g. "single 3": the one way the book names a block
    module: torch.nn.Module
    token_rule: str  # SEPARATE, CONCATENATED or IMAGE_ONLY


def transformer_of(pipe_or_transformer) -> torch.nn.Module:
    """The denoising transformer of a pipeline (or the transformer itself)."""
    return getattr(pipe_or_transformer, "transformer", pipe_or_transformer)


def architecture(pipe_or_transformer) -> Architecture:
    """The table entry for this pipeline's transformer; a clear error for classes not in the table."""
    name = type(transformer_of(pipe_or_transformer)).__name__
    if name not in ARCHITECTURES:
        raise ValueError(f"unsupported transformer class {name!r}; supported: {sorted(ARCHITECTURES)}. "
                         "Add an entry to helpers.models.ARCHITECTURES to support it.")
    return ARCHITECTURES[name]


def residual_blocks(pipe_or_transformer) -> list[Block]:
    """The blocks that form the residual stream, in forward order, each with its label and image-token rule."""
    transformer = transformer_of(pipe_or_transformer)
    return [Block(f"{attr}.{i}", f"{label} {i}", module, rule)
            for attr, rule, label in architecture(transformer).blocks
            for i, module in enumerate(getattr(transformer, attr))]


def block_labels(pipe_or_transformer) -> list[str]:
    """The blocks' names as the book writes them: "double 0", ..., "single 2" (or "block 5")."""
    return [b.label for b in residual_blocks(pipe_or_transformer)]


def hidden_width(pipe_or_transformer) -> int:
    """Channels of the residual stream (the transformer's inner width)."""
    config = transformer_of(pipe_or_transformer).config
    return config.num_attention_heads * config.attention_head_dim


def guidance_layout(pipe) -> str | None:
    """The guidance row layout of a loaded pipeline, from the MODELS entries of its class (None: not in the table)."""
    layouts = {m.guidance for m in MODELS.values() if m.pipeline == type(pipe).__name__}
    return max(layouts - {NONE}, default=NONE) if layouts else None


def conditional_rows(layout: str | None, rows_by_call: list[int], n_images: int) -> list[int]:
    """The one resolver of the conditional rows of n images among a step's rows, from the guidance layout
    (``Model.guidance``; where NONE or unknown, the calls tell it) and the rows of each transformer call."""
    n = n_images
    if sum(rows_by_call) == n:
        return list(range(n))
    if layout not in (BATCHED, TWO_CALLS):
        layout = BATCHED if rows_by_call[0] == 2 * n else TWO_CALLS if rows_by_call[:2] == [n, n] else layout
    if layout == BATCHED and rows_by_call[0] == 2 * n:
        return list(range(n, 2 * n))
    if layout == TWO_CALLS and rows_by_call[:2] == [n, n]:
        return list(range(n))
    raise ValueError(f"cannot find the conditional rows of {n} images in a step whose calls have {rows_by_call} "
                     f"rows with guidance layout {layout!r}")


def sampling_settings(name: str, **overrides) -> dict:
    """The pipeline arguments every chapter uses for ``name`` (MODELS[name].settings), with ``overrides``."""
    return {**_entry(name).settings, **overrides}


def _entry(name: str) -> Model:
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known: {list(MODELS)}")
    return MODELS[name]


def _memory() -> tuple[float, float]:
    """(GPU GiB, host RAM GiB) available here (0 GPU without CUDA)."""
    gpu = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
    return gpu, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


MARGIN_GIB = 3.0  # GPU memory for activations, the VAE decode and the CUDA context on top of the weights
RAM_MARGIN_GIB = 2.0  # host RAM for Python, torch and the runtime on top of the weights (tools/memory.py uses both)


def memory_plan(name: str, gpu_gib: float, ram_gib: float) -> str:
    """How ``name`` fits a machine: "gpu" (all on the GPU), "offload" (``enable_model_cpu_offload``) or "cpu" (the
    bundled model without a GPU); else a ValueError saying what is missing and what fits. Needs: the weights (or, with
    offload, the largest component) + ``MARGIN_GIB`` of GPU memory; all bfloat16 weights (a 4-bit model: its largest
    component) + ``RAM_MARGIN_GIB`` of RAM, as tools/memory.py and book/real_models.md compute them."""
    m = _entry(name)
    if m.hub_id is None:
        return "gpu" if gpu_gib > 0 else "cpu"

    def needs(o: Model) -> tuple[float, float | None, float]:  # GPU whole, GPU with offload, RAM
        ram = (o.largest_gib if o.quantize else o.weights_gib) + RAM_MARGIN_GIB
        return o.weights_gib + MARGIN_GIB, None if o.quantize else o.largest_gib + MARGIN_GIB, ram

    def plan(o: Model) -> str | None:
        gpu, offload, ram = needs(o)
        if ram_gib < ram or gpu_gib <= 0:
            return None
        return "gpu" if gpu_gib >= gpu else "offload" if offload is not None and gpu_gib >= offload else None

    if plan(m):
        return plan(m)
    gpu, offload, ram = needs(m)
    need = f"{gpu:.1f} GiB of GPU memory" + (f" ({offload:.1f} with model offload)" if offload else "")
    here = (f"this machine has {gpu_gib:.1f} GiB of GPU memory and {ram_gib:.1f} GiB of RAM" if gpu_gib > 0 else
            f"this machine has no CUDA GPU (choose a GPU runtime; on Colab: Runtime > Change runtime type > T4 GPU) "
            f"and {ram_gib:.1f} GiB of RAM")
    fitting = {n: plan(o) for n, o in MODELS.items() if o.hub_id and plan(o)}
    smaller = [n for n in fitting if MODELS[n].hub_id == m.hub_id and MODELS[n].quantize]
    advice = (f'Use MODEL = "{smaller[0]}": the same model with 4-bit weights, which fits here. ' if smaller else "")
    listed = ", ".join(f'"{n}"' + (" (model offload)" if p == "offload" else "") for n, p in fitting.items())
    raise ValueError(
        f"{name} needs {need} and {ram:.1f} GiB of RAM; {here}. {advice}"
        f"Models that fit here: {listed or 'none'}; the bundled \"shapes\" model runs anywhere. "
        "Pass check_memory=False to try anyway.")


def load_pipeline(name: str, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                  cpu_offload: bool | None = None, check_memory: bool = True, **from_pretrained_kwargs):
    """Load a pipeline by friendly name: "shapes" (the bundled book model, on CPU) or one of ``MODELS``.

    For hub models, GPU memory and RAM are checked against the model's need *before* anything is downloaded;
    ``cpu_offload=None`` picks model offload when the weights do not fit the GPU whole. ``dtype`` defaults to
    bfloat16; 4-bit entries (``MODELS[name].quantize``) use diffusers' bitsandbytes quantization.
    """
    m = _entry(name)
    if m.hub_id is None:
        pipe = load_shapes_pipeline()
        return pipe.to(device=device or "cpu", dtype=dtype) if (device or dtype) else pipe
    if check_memory:
        plan = memory_plan(name, *_memory())
        cpu_offload = (plan == "offload") if cpu_offload is None else cpu_offload
    dtype_key = "dtype" if hasattr(diffusers.pipelines.pipeline_utils, "_resolve_dtype") else "torch_dtype"
    kwargs = {dtype_key: dtype or torch.bfloat16, **from_pretrained_kwargs}
    if m.quantize:
        kwargs["quantization_config"] = diffusers.PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit", components_to_quantize=list(m.quantize),
            quant_kwargs=dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    try:
        pipe = getattr(diffusers, m.pipeline).from_pretrained(m.hub_id, **kwargs)
    except Exception as err:  # no network, not in the cache, licence not accepted, no token, no bitsandbytes ...
        licence = (f"{name} is gated: accept its licence at https://huggingface.co/{m.hub_id} and log in "
                   "(`hf auth login`) first. " if m.gated else "")
        quant = "4-bit loading needs `pip install bitsandbytes` and a CUDA GPU. " if m.quantize else ""
        raise RuntimeError(f"could not load {name!r} ({m.hub_id}) with diffusers.{m.pipeline}: "
                           f"{type(err).__name__}: {err}\n{licence}{quant}Real models need the Hugging Face hub "
                           "(or a local cache); the bundled model loads offline: load_pipeline('shapes').") from err
    if cpu_offload:
        pipe.enable_model_cpu_offload()
    else:  # 4-bit weights are already on the GPU; this moves the rest (CLIP, VAE), as diffusers' docs do
        pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    return pipe

