"""How much memory the real DiTs need and what fits where: parameter counts from their published configs, bytes per
weight format, GPU memory and host RAM, and the decisions ``helpers.load_pipeline`` takes from them.

Nothing is downloaded: each pipeline component (transformer, text encoders, VAE) is built from its published
hyperparameters on PyTorch's ``meta`` device (shapes without storage) from the very diffusers / transformers class
the pipeline loads, and its parameters and buffers are counted. ``PUBLISHED_BYTES`` holds the checkpoint sizes the
Hugging Face hub lists for several components; ``tests/test_memory.py`` checks the counts against them.

    python tools/memory.py                                # print the tables
    python tools/memory.py --write book/real_models.md    # refresh the page's generated blocks
    python tools/memory.py --models                       # the numbers helpers.models.MODELS must hold

``helpers.models.MODELS[name].weights_gib`` / ``.largest_gib`` are ``need(name)`` rounded to 0.01 GiB, and
``helpers.models.memory_plan`` decides from them what fits a machine. The page ``book/real_models.md`` carries the
tables between ``<!-- generated:NAME -->`` markers; ``tests/test_memory.py`` regenerates them and fails if the page,
or a number in MODELS, differs from what this file computes. The helpers package never imports this file.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import torch

from helpers.hooks import stats_nbytes
from helpers.models import (BATCHED, MARGIN_GIB, MODELS, NONE, RAM_MARGIN_GIB, TWO_CALLS, hidden_width, memory_plan,
                            residual_blocks)
from helpers.shapes import MODEL_DIR

GIB = 2 ** 30

# ----------------------------------------------------------------------------------------------- assumptions

#: Bytes per weight. "4-bit" is bitsandbytes NF4 without double quantisation: half a byte per weight and one float32
#: scale per block of 64 weights. It applies to the ``nn.Linear`` weights a quantiser converts; everything else
#: (embeddings, norms, biases, convolutions, buffers, layers the library keeps unquantised) stays in bfloat16.
WEIGHT_BYTES = {"bf16": 2.0, "4-bit": 0.5 + 4 / 64}
OTHER_BYTES = 2.0

#: Machines: (GPU memory in GiB as nvidia-smi reports it, host RAM in GiB), the RAM as Colab's Resources panel
#: shows it (in GB) for its runtimes.
MACHINES = {
    "Colab T4 (free)": (15360 / 1024, 12.7e9 / GIB),
    "Colab L4": (23034 / 1024, 53.0e9 / GIB),
    "Colab A100": (40960 / 1024, 83.5e9 / GIB),
    "80 GB GPU server": (81920 / 1024, 128.0),  # an A100 or H100 80 GB with 128 GiB of RAM (an assumption)
}

#: Denoising steps for the recorded-statistics column (helpers.stats_nbytes).
RECORD_STEPS = 28


# ----------------------------------------------------------------------------------------------- components

@dataclass(frozen=True)
class Component:
    """One pipeline component: the attribute name in the pipeline, the class it is loaded as, and the published
    hyperparameters that fix its size (everything else keeps the class defaults), or a folder with its config.json."""

    attribute: str            # "transformer", "text_encoder_2", "vae", ...
    cls: str                  # "diffusers.FluxTransformer2DModel", "transformers.T5EncoderModel", ...
    config: Mapping | Path = field(default_factory=dict)
    config_cls: str | None = None   # transformers models take a config object: "transformers.T5Config"
    source: str = ""          # where the hyperparameters are published

    def build(self) -> torch.nn.Module:
        """The component with the published shapes on the meta device (no memory, no download)."""
        cls = _resolve(self.cls)
        with torch.device("meta"):
            if isinstance(self.config, Path):
                config = _resolve(self.config_cls).from_pretrained(self.config) if self.config_cls else None
                module = cls(config) if config else cls.from_config(cls.load_config(self.config))
            else:
                module = cls(_resolve(self.config_cls)(**self.config)) if self.config_cls else cls(**self.config)
            if hasattr(module, "tie_weights"):  # transformers < 5.1 leaves T5's two embeddings untied here
                module.tie_weights()
        return module


def _resolve(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


# Shared components. Values as in the config.json files at the ``source`` paths on huggingface.co.
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
KL_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              block_out_channels=(128, 256, 512, 512), layers_per_block=2)
T5_COMPONENT = Component("text_encoder_2", "transformers.T5EncoderModel", T5_XXL, "transformers.T5Config",
                         "google/t5-v1_1-xxl (text_encoder_2/config.json of FLUX.1)")


def _flux1(guidance: bool) -> tuple[Component, ...]:
    """FLUX.1 [dev] has a guidance embedder, [schnell] has not; the rest is shared."""
    return (
        Component("transformer", "diffusers.FluxTransformer2DModel",
                  dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                       guidance_embeds=guidance),
                  source=f"FLUX.1-{'dev' if guidance else 'schnell'}/transformer/config.json"),
        T5_COMPONENT,
        Component("text_encoder", "transformers.CLIPTextModel", CLIP_L, "transformers.CLIPTextConfig",
                  "openai/clip-vit-large-patch14 (FLUX.1 text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderKL", {**KL_VAE, "latent_channels": 16, "use_quant_conv": False,
                                                     "use_post_quant_conv": False}, source="FLUX.1 vae/config.json"),
    )


#: Per friendly name (helpers.models.MODELS), the components the pipeline loads.
COMPONENTS: dict[str, tuple[Component, ...]] = {
    "shapes": (
        Component("transformer", "diffusers.FluxTransformer2DModel", MODEL_DIR / "transformer",
                  source="helpers/shapes/model/transformer/config.json (the bundled book model)"),
        Component("text_encoder", "transformers.CLIPTextModel", MODEL_DIR / "text_encoder",
                  "transformers.CLIPTextConfig", "helpers/shapes/model/text_encoder/config.json"),
    ),
    "flux.1-schnell": _flux1(False),
    "flux.1-schnell-4bit": _flux1(False),  # the same checkpoint; MODELS says which components load in 4-bit
    "flux.1-dev": _flux1(True),
    "flux.2-klein": (
        Component("transformer", "diffusers.Flux2Transformer2DModel",
                  dict(in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=7680, mlp_ratio=3.0,
                       timestep_guidance_channels=256, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000,
                       guidance_embeds=False),
                  source="FLUX.2-klein-4B/transformer/config.json"),
        Component("text_encoder", "transformers.Qwen3ForCausalLM",
                  dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
                  "transformers.Qwen3Config", "Qwen/Qwen3-4B (FLUX.2-klein-4B text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderKLFlux2", {}, source="FLUX.2 vae/config.json (the class defaults)"),
    ),
    "qwen-image": (
        Component("transformer", "diffusers.QwenImageTransformer2DModel",
                  dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=3584),
                  source="Qwen/Qwen-Image/transformer/config.json"),
        Component("text_encoder", "transformers.Qwen2_5_VLForConditionalGeneration",
                  dict(text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                        tie_word_embeddings=False),
                       vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                          out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                          temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                                          hidden_act="silu"),
                       tie_word_embeddings=False),
                  "transformers.Qwen2_5_VLConfig", "Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderKLQwenImage", {}, source="Qwen-Image vae/config.json (class defaults)"),
    ),
    "sana-1.5": (
        # SANA 1.5 1.6B is the Sana 1.6B architecture plus RMS QK-norm (NVlabs/Sana tools/convert_sana_to_diffusers.py).
        Component("transformer", "diffusers.SanaTransformer2DModel",
                  dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                       num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                       caption_channels=2304, mlp_ratio=2.5, sample_size=32, patch_size=1,
                       qk_norm="rms_norm_across_heads"),
                  source="SANA1.5_1.6B_1024px_diffusers/transformer/config.json"),
        Component("text_encoder", "transformers.Gemma2Model",
                  dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, vocab_size=256000),
                  "transformers.Gemma2Config", "google/gemma-2-2b-it (SANA text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderDC",
                  dict(encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                       decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                       downsample_block_type="Conv", upsample_block_type="interpolate"),
                  source="mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers config.json"),
    ),
    "sd3.5-medium": (
        Component("transformer", "diffusers.SD3Transformer2DModel",
                  dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                       num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                       pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                       dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
                  source="stable-diffusion-3.5-medium/transformer/config.json"),
        Component("text_encoder_3", "transformers.T5EncoderModel", T5_XXL, "transformers.T5Config",
                  "google/t5-v1_1-xxl (SD3.5 text_encoder_3/config.json)"),
        Component("text_encoder_2", "transformers.CLIPTextModelWithProjection", CLIP_G, "transformers.CLIPTextConfig",
                  "OpenCLIP ViT-bigG-14 text tower (SD3.5 text_encoder_2/config.json)"),
        Component("text_encoder", "transformers.CLIPTextModelWithProjection", CLIP_L, "transformers.CLIPTextConfig",
                  "openai/clip-vit-large-patch14 (SD3.5 text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderKL", {**KL_VAE, "latent_channels": 16, "use_quant_conv": False,
                                                     "use_post_quant_conv": False}, source="SD3.5 vae/config.json"),
    ),
    "pixart-sigma": (
        Component("transformer", "diffusers.PixArtTransformer2DModel",
                  dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                       cross_attention_dim=1152, sample_size=128, patch_size=2, caption_channels=4096,
                       interpolation_scale=2, use_additional_conditions=False),
                  source="PixArt-Sigma-XL-2-1024-MS/transformer/config.json"),
        Component("text_encoder", "transformers.T5EncoderModel", T5_XXL, "transformers.T5Config",
                  "google/t5-v1_1-xxl (PixArt-Sigma text_encoder/config.json)"),
        Component("vae", "diffusers.AutoencoderKL", {**KL_VAE, "latent_channels": 4},
                  source="PixArt-Sigma vae/config.json (the SDXL VAE)"),
    ),
}

#: Checkpoint sizes the hub lists (bytes, and bytes per value stored), to check the counts against: the file holds
#: the parameters and the persistent buffers. Sizes shown in GB by the hub are rounded to 3 digits.
PUBLISHED_BYTES: dict[tuple[str, str], tuple[float, int]] = {
    ("flux.1-schnell", "transformer"): (23.78e9, 2),     # 9.96 + 9.95 + 3.87 GB
    ("qwen-image", "transformer"): (40.9e9, 2),          # 9 bf16 shards, 40.9 GB
    ("qwen-image", "text_encoder"): (16.58e9, 2),        # 4.97 + 4.99 + 4.93 + 1.69 GB
    ("qwen-image", "vae"): (254e6, 2),
    ("flux.2-klein", "text_encoder"): (8.05e9, 2),       # 4.97 + 3.08 GB
    ("sana-1.5", "text_encoder"): (5.231e9, 2),          # 4.99 GB + 241 MB
    ("pixart-sigma", "transformer"): (2443492488, 4),    # one float32 file, exact size from its LFS pointer
    ("sd3.5-medium", "transformer"): (4.94e9, 2),        # includes the 384 x 384 position table (a buffer)
    ("sd3.5-medium", "text_encoder"): (247e6, 2),
    ("sd3.5-medium", "text_encoder_2"): (1.39e9, 2),
    ("sd3.5-medium", "text_encoder_3"): (9.52e9, 2),     # 4.99 + 4.53 GB
    ("sd3.5-medium", "vae"): (168e6, 2),
}



# ----------------------------------------------------------------------------------------------- counting

class Size(NamedTuple):
    """What one component holds: parameters, of which ``nn.Linear`` weights a 4-bit quantiser converts, values in
    buffers (persistent ones are saved in the checkpoint), and, for transformers in helpers.models.ARCHITECTURES,
    the residual blocks and their width."""

    params: int
    quantisable: int
    buffers: int
    persistent_buffers: int
    blocks: int = 0
    width: int = 0

    def nbytes(self, fmt: str = "bf16") -> float:
        """Bytes with the quantisable weights in ``fmt`` and everything else in bfloat16."""
        if fmt not in WEIGHT_BYTES:
            raise ValueError(f"unknown weight format {fmt!r}; choose one of {list(WEIGHT_BYTES)}")
        return self.quantisable * WEIGHT_BYTES[fmt] + (self.params - self.quantisable + self.buffers) * OTHER_BYTES


def _unconverted(module: torch.nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` layers transformers' bitsandbytes loading leaves unquantised: those matching
    ``_keep_in_fp32_modules`` (T5's ``wo``), the output embedding and the module of the last parameter."""
    if not hasattr(module, "get_output_embeddings"):  # diffusers models: every nn.Linear is converted
        return set()
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ()) | set(
        getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    output = module.get_output_embeddings()
    last = list(module.named_parameters())[-1][0].rsplit(".", 1)[0]
    return {name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear) and (
        m is output or name == last or keep & set(name.split(".")))}


def measure(module: torch.nn.Module) -> Size:
    """Count a module's parameters (tied weights once), quantisable weights and buffers."""
    params = sum(p.numel() for p in module.parameters())
    skip = _unconverted(module)
    quantisable = sum(m.weight.numel() for name, m in module.named_modules()
                      if isinstance(m, torch.nn.Linear) and name not in skip)
    buffers = sum(b.numel() for b in module.buffers())
    persistent = sum(b.numel() for m in module.modules() for name, b in m.named_buffers(recurse=False)
                     if name not in m._non_persistent_buffers_set)
    try:
        blocks, width = len(residual_blocks(module)), hidden_width(module)
    except (ValueError, AttributeError):  # not a transformer of helpers.models.ARCHITECTURES
        blocks = width = 0
    return Size(params, quantisable, buffers, persistent, blocks, width)


@functools.lru_cache(maxsize=None)
def component_sizes(model: str) -> dict[str, Size]:
    """{pipeline attribute: Size} for one model of COMPONENTS (built on the meta device; cached)."""
    if model not in COMPONENTS:
        raise ValueError(f"no component table for {model!r}; known: {list(COMPONENTS)}")
    return {c.attribute: measure(c.build()) for c in COMPONENTS[model]}


# ----------------------------------------------------------------------------------------------- needs

class Need(NamedTuple):
    """What one MODELS entry needs, in GiB: its weights as loaded (4-bit where ``MODELS[name].quantize`` says) in
    all and of the largest component; GPU memory with every component on the GPU and with model offload (None for
    4-bit entries); host RAM. The last three follow the rule of ``helpers.models.memory_plan``."""

    weights: float
    largest: float
    gpu: float
    offload: float | None
    ram: float


def weight_format(model: str, attribute: str) -> str:
    return "4-bit" if attribute in MODELS[model].quantize else "bf16"


def need(model: str) -> Need:
    """The memory one MODELS entry needs: weights from the component counts (rounded to 0.01 GiB, as MODELS holds
    them), GPU memory and RAM from those and the margins, by the rule of helpers.models.memory_plan."""
    sizes = component_sizes(model)
    nbytes = [s.nbytes(weight_format(model, a)) for a, s in sizes.items()]
    weights, largest = round(sum(nbytes) / GIB, 2), round(max(nbytes) / GIB, 2)
    quantised = bool(MODELS[model].quantize)
    # bfloat16: from_pretrained holds the whole pipeline in RAM before .to("cuda"), and offloaded weights live there.
    # 4-bit: bitsandbytes quantises each weight onto the GPU as it is read; RAM holds about one component at most.
    ram = (largest if quantised else weights) + RAM_MARGIN_GIB
    return Need(weights, largest, weights + MARGIN_GIB, None if quantised else largest + MARGIN_GIB, ram)


def models_numbers() -> dict[str, tuple[float, float]]:
    """{name: (weights_gib, largest_gib)} as helpers.models.MODELS must hold them."""
    return {name: need(name)[:2] for name in MODELS}


def fits(gpu_gib: float, ram_gib: float) -> dict[str, str]:
    """{model: "gpu" | "offload" | "no"} for a machine, as helpers.load_pipeline decides (memory_plan)."""
    out = {}
    for name, m in MODELS.items():
        if m.hub_id is None:
            continue
        try:
            out[name] = memory_plan(name, gpu_gib, ram_gib)
        except ValueError:
            out[name] = "no"
    return out


# ----------------------------------------------------------------------------------------------- tables

HUB_MODELS = [n for n, m in MODELS.items() if m.hub_id]
#: Models with their own weights: the 4-bit entries share their checkpoint with a bfloat16 one.
CHECKPOINTS = [n for n in HUB_MODELS if not MODELS[n].quantize]


def _billions(n: float) -> str:
    return f"{n / 1e9:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


GUIDANCE = {NONE: "no guidance rows", BATCHED: "guidance rows [uncond; cond] in one call",
            TWO_CALLS: "guidance in two calls: [cond], then [uncond]"}


def models_list() -> str:
    """The one-line switch: friendly name, hub checkpoint, pipeline class, licence, guidance rows."""
    lines = []
    for name in HUB_MODELS:
        m = MODELS[name]
        quant = f" with {' and '.join(f'`{c}`' for c in m.quantize)} in 4-bit" if m.quantize else ""
        lines.append(f'- `"{name}"`: [{m.hub_id.split("/")[1]}](https://huggingface.co/{m.hub_id}){quant}, '
                     f"`{m.pipeline}`, {GUIDANCE[m.guidance]}" + (", **licence to accept**" if m.gated else "") + ".")
    return "\n".join(lines)


def parameters_table() -> str:
    """Parameters per component, in billions."""
    rows = []
    for name in CHECKPOINTS:
        sizes = component_sizes(name)
        encoders = " + ".join(_billions(s.params) for a, s in sizes.items() if a.startswith("text_encoder"))
        rows.append([f"`{name}`", _billions(sizes["transformer"].params), encoders, _billions(sizes["vae"].params)])
    return _markdown(["model", "transformer", "text encoders", "VAE"], rows)


def hooks_table() -> str:
    """What the hooks see: residual blocks x width, and the recorded statistics of one image."""
    rows = []
    for name in CHECKPOINTS:
        t = component_sizes(name)["transformer"]
        rows.append([f"`{name}`", f"{t.blocks} x {t.width}",
                     f"{stats_nbytes(RECORD_STEPS, t.blocks, 1, t.width) / 1e6:.0f}"])
    return _markdown(["model", "blocks x width", "MB"], rows)


def needs_table() -> str:
    """Per model: weights as loaded, GPU memory (whole / with model offload) and RAM, in GiB."""
    rows = [[f"`{name}`", f"{n.weights:.1f}", f"{n.gpu:.1f}", "-" if n.offload is None else f"{n.offload:.1f}",
             f"{n.ram:.1f}"] for name in HUB_MODELS for n in [need(name)]]
    return _markdown(["model", "weights", "GPU", "offload", "RAM"], rows)


def fits_text() -> str:
    """Per machine, which models load on the GPU, which with model offload, which not (memory_plan's decision)."""
    words = {"gpu": "On the GPU", "offload": "With model offload", "no": "Does not fit"}
    lines = []
    for machine, (gpu, ram) in MACHINES.items():
        plan = fits(gpu, ram)
        parts = [f"{word}: " + ", ".join(f"`{n}`" for n, p in plan.items() if p == key)
                 for key, word in words.items() if key in plan.values()]
        lines.append(f"- **{machine}**, {gpu:.1f} GiB GPU and {ram:.1f} GiB RAM. " + ". ".join(parts) + ".")
    return "\n".join(lines)


def assumptions_text() -> str:
    """The inputs of the arithmetic, as a list (so that the page states them from the code that uses them)."""
    return "\n".join([
        f"- Weights: bfloat16 = {WEIGHT_BYTES['bf16']:g} bytes per value. 4-bit (bitsandbytes NF4) = "
        f"{WEIGHT_BYTES['4-bit']:g} bytes per `nn.Linear` weight the quantiser converts; everything else stays in "
        "bfloat16 (T5 keeps its `wo` layers unquantised).",
        f"- GPU: the weights (with model offload, the largest component) plus {MARGIN_GIB:g} GiB for one image's "
        "activations, the VAE decode and the CUDA context.",
        "- RAM: bfloat16 models need all their weights in RAM (`from_pretrained` loads the pipeline there before it "
        "moves to the GPU; offloaded weights live there); 4-bit models about their largest component "
        f"(bitsandbytes quantises each weight onto the GPU as it is read); plus {RAM_MARGIN_GIB:g} GiB for Python, "
        "torch and the runtime.",
        "- Machines: GPU memory as `nvidia-smi` reports it; RAM as Colab shows it for its runtimes (T4 12.7 GB, L4 "
        "53 GB, A100 83.5 GB); the 80 GB server's 128 GiB is an example.",
        "- The margins are assumptions, not measurements.",
    ])


def buffers_text() -> str:
    """Models whose buffers (fixed tables saved with the weights) are large enough to matter."""
    notes = [f"`{name}` {attr}: {s.buffers / 1e9:.2f} B values in buffers ({s.buffers * OTHER_BYTES / GIB:.2f} GiB "
             "in bfloat16), counted above" for name in CHECKPOINTS for attr, s in component_sizes(name).items()
             if s.buffers > 0.01 * s.params]
    return ("- " + "\n- ".join(notes)) if notes else "- No component holds buffers above 1% of its parameters."


SECTIONS: dict[str, Callable[[], str]] = {
    "models": models_list,
    "assumptions": assumptions_text,
    "needs": needs_table,
    "fits": fits_text,
    "parameters": parameters_table,
    "hooks": hooks_table,
    "buffers": buffers_text,
}

_BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def render(text: str, sections: Mapping[str, Callable[[], str]] = SECTIONS) -> str:
    """``text`` with the body of every ``<!-- generated:NAME -->`` ... ``<!-- /generated:NAME -->`` block replaced
    by ``sections[NAME]()``; unknown names raise."""
    def replace(match):
        name = match["name"]
        if name not in sections:
            raise KeyError(f"unknown generated block {name!r}; known: {list(sections)}")
        return match.group(1) + sections[name]().rstrip("\n") + "\n" + match.group(4)
    return _BLOCK.sub(replace, text)


def generated_blocks(text: str) -> dict[str, str]:
    """{name: body} of the generated blocks in ``text``."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="PAGE", help="refresh the generated blocks of this markdown page")
    parser.add_argument("--models", action="store_true", help="print weights_gib, largest_gib for helpers.models")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        old = path.read_text(encoding="utf-8")
        new = render(old)
        path.write_text(new, encoding="utf-8")
        print(f"{path}: {len(generated_blocks(new))} generated blocks, {'changed' if new != old else 'unchanged'}")
    elif args.models:
        for name, (weights, largest) in models_numbers().items():
            print(f"{name:<22} weights_gib={weights}, largest_gib={largest}")
    else:
        for name, make in SECTIONS.items():
            print(f"## {name}\n{make()}\n")


if __name__ == "__main__":
    main()
