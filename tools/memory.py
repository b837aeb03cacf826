"""How much memory the real DiTs need: parameter counts from their published configs, bytes per dtype, and which
common GPUs hold them fully, with ``enable_model_cpu_offload()`` or only with sequential offload.

Nothing is downloaded: each pipeline component (transformer, text encoders, VAE) is built from its published
hyperparameters on PyTorch's ``meta`` device (shapes without storage) from the very diffusers / transformers class
the pipeline loads, and its parameters and buffers are counted. ``PUBLISHED_BYTES`` holds the checkpoint sizes the
Hugging Face hub lists for several components; ``tests/test_memory.py`` checks the counts against them.

    python -m helpers.memory                                # print the tables
    python -m helpers.memory --write book/real_models.md    # refresh the page's generated blocks

The page ``book/real_models.md`` carries the tables between ``<!-- generated:NAME -->`` markers; a test regenerates
them and fails if the committed page differs, so no number on it is typed by hand.
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

from .models import MODELS, hidden_width, residual_blocks

GIB = 2 ** 30

# ----------------------------------------------------------------------------------------------- assumptions

#: Bytes per weight of ``nn.Linear`` layers in each weight format. Everything else (embeddings, norms, biases,
#: convolutions, buffers) stays in bfloat16, as bitsandbytes / torchao leave them. "4-bit" is NF4 with one float32
#: scale per block of 64 weights (bitsandbytes without double quantisation): 0.5 + 4 / 64 bytes.
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "4-bit": 0.5 + 4 / 64}
OTHER_BYTES = 2.0

#: GPU memory as ``nvidia-smi`` reports it (MiB), in GiB. The T4 has no bfloat16 tensor cores; float16 takes the
#: same two bytes per weight, so the arithmetic holds for either.
GPUS = {"T4 16 GB": 15360 / 1024, "L4 24 GB": 23034 / 1024, "A100 40 GB": 40960 / 1024, "A100 80 GB": 81920 / 1024}

#: Room left on top of the weights for one 1024x1024 image: the transformer's activations, the VAE decode and the
#: CUDA context. An assumption, not a measurement (pipe.vae.enable_tiling() shrinks the VAE part).
MARGIN_GIB = 3.0

#: Denoising steps for the recording-overhead column (helpers.activations.stats_nbytes).
RECORD_STEPS = 28


# ----------------------------------------------------------------------------------------------- components

@dataclass(frozen=True)
class Component:
    """One pipeline component: the attribute name in the pipeline, the class it is loaded as, and the published
    hyperparameters that fix its size (everything else keeps the class defaults)."""

    attribute: str            # "transformer", "text_encoder_2", "vae", ...
    cls: str                  # "diffusers.FluxTransformer2DModel", "transformers.T5EncoderModel", ...
    config: Mapping = field(default_factory=dict)
    config_cls: str | None = None   # transformers models take a config object: "transformers.T5Config"
    source: str = ""          # where the hyperparameters are published

    def build(self) -> torch.nn.Module:
        """The component with the published shapes on the meta device (no memory, no download)."""
        cls = _resolve(self.cls)
        with torch.device("meta"):
            if self.config_cls:
                return cls(_resolve(self.config_cls)(**self.config))
            return cls(**self.config)


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


#: Per friendly name (helpers.models.MODELS), the components the pipeline loads from the hub.
COMPONENTS: dict[str, tuple[Component, ...]] = {
    "flux.1-schnell": _flux1(False),
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
    """What one component holds: parameters, of which ``nn.Linear`` weights (what quantisers convert), values in
    buffers (persistent ones are saved in the checkpoint), and the largest leaf module's parameters (the unit
    sequential offload moves to the GPU). Residual blocks and width come from helpers.models, for transformers."""

    params: int
    linear_weights: int
    buffers: int
    persistent_buffers: int
    largest_leaf: int
    blocks: int = 0
    width: int = 0

    def nbytes(self, fmt: str = "bf16") -> float:
        """Bytes in GPU memory with ``nn.Linear`` weights in ``fmt`` and everything else in bfloat16."""
        if fmt not in WEIGHT_BYTES:
            raise ValueError(f"unknown weight format {fmt!r}; choose one of {list(WEIGHT_BYTES)}")
        other = self.params - self.linear_weights + self.buffers
        return self.linear_weights * WEIGHT_BYTES[fmt] + other * OTHER_BYTES


def _persistent_buffer_numel(model: torch.nn.Module) -> int:
    return sum(b.numel() for m in model.modules() for name, b in m.named_buffers(recurse=False)
               if name not in m._non_persistent_buffers_set)


def measure(module: torch.nn.Module) -> Size:
    """Count a module's parameters (tied weights once), buffers and largest leaf."""
    params = sum(p.numel() for p in module.parameters())
    linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
    buffers = sum(b.numel() for b in module.buffers())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()), default=0)
    blocks = width = 0
    try:
        blocks = len(residual_blocks(module))
        width = hidden_width(module)
    except (ValueError, AttributeError):
        pass  # not a transformer in helpers.models.ARCHITECTURES (text encoders, VAEs)
    return Size(params, linear, buffers, _persistent_buffer_numel(module), largest, blocks, width)


@functools.lru_cache(maxsize=None)
def component_sizes(model: str) -> dict[str, Size]:
    """{pipeline attribute: Size} for one model of COMPONENTS (built on the meta device; cached)."""
    if model not in COMPONENTS:
        raise ValueError(f"no component table for {model!r}; known: {list(COMPONENTS)}")
    return {c.attribute: measure(c.build()) for c in COMPONENTS[model]}


# ----------------------------------------------------------------------------------------------- fitting

OFFLOAD_MODES = ("GPU", "model offload", "sequential offload", "does not fit")


def peak_gib(sizes: Mapping[str, Size], mode: str, fmt: Callable[[str], str] | str = "bf16",
             margin_gib: float = MARGIN_GIB) -> float:
    """Approximate peak GPU memory (GiB) of one generation: all weights (``"GPU"``), the largest component
    (``"model offload"``: ``enable_model_cpu_offload()`` keeps one component on the GPU at a time), or the largest
    leaf module (``"sequential offload"``), plus ``margin_gib``. ``fmt``: a weight format for every component, or
    a function attribute -> format."""
    pick = (lambda name: fmt) if isinstance(fmt, str) else fmt
    nbytes = {name: s.nbytes(pick(name)) for name, s in sizes.items()}
    if mode == "GPU":
        weights = sum(nbytes.values())
    elif mode == "model offload":
        weights = max(nbytes.values())
    elif mode == "sequential offload":
        weights = max(s.largest_leaf for s in sizes.values()) * WEIGHT_BYTES["bf16"]
    else:
        raise ValueError(f"mode must be one of {OFFLOAD_MODES[:3]}, got {mode!r}")
    return weights / GIB + margin_gib


def fit(sizes: Mapping[str, Size], gpu_gib: float, fmt: Callable[[str], str] | str = "bf16",
        margin_gib: float = MARGIN_GIB) -> str:
    """The least offloading that fits a GPU of ``gpu_gib``: one of OFFLOAD_MODES."""
    for mode in OFFLOAD_MODES[:3]:
        if peak_gib(sizes, mode, fmt, margin_gib) <= gpu_gib:
            return mode
    return OFFLOAD_MODES[3]


def quantised(fmt: str) -> Callable[[str], str]:
    """Weight format per component: ``fmt`` for the transformer and the text encoders, bfloat16 for the VAE."""
    return lambda name: "bf16" if name == "vae" else fmt


# ----------------------------------------------------------------------------------------------- tables

def _billions(n: float) -> str:
    return f"{n / 1e9:.2f}"


def _gib(n: float) -> str:
    return f"{n / GIB:.1f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def models_table() -> str:
    """The one-line switch: friendly name, hub checkpoint, pipeline class, licence gate, guidance layout."""
    rows = [[f'`"{name}"`', f"[{m.hub_id}](https://huggingface.co/{m.hub_id})", f"`{m.pipeline}`",
             "yes" if m.gated else "no", m.guidance] for name, m in MODELS.items()]
    return _markdown(["`MODEL =`", "hub checkpoint", "pipeline", "licence to accept", "rows of a denoising step"],
                     rows)


def parameters_table() -> str:
    """Parameters per component (billions) and the bfloat16 weights (GiB), per model."""
    rows = []
    for name in COMPONENTS:
        sizes = component_sizes(name)
        encoders = [s for a, s in sizes.items() if a.startswith("text_encoder")]
        t = sizes["transformer"]
        rows.append([f'`"{name}"`', _billions(t.params), f"{t.blocks} x {t.width}",
                     " + ".join(_billions(s.params) for s in encoders), _billions(sizes["vae"].params),
                     _gib(sum(s.nbytes() for s in sizes.values())),
                     _gib(max(s.nbytes() for s in sizes.values())),
                     f"{stats_mb(t):.0f}"])
    return _markdown(["model", "transformer (B params)", "residual blocks x width", "text encoder(s) (B params)",
                      "VAE (B params)", "all weights, bf16 (GiB)", "largest component, bf16 (GiB)",
                      f"recorded statistics per image, {RECORD_STEPS} steps (MB, CPU)"], rows)


def stats_mb(transformer: Size) -> float:
    """Megabytes of ``helpers.record`` statistics for one image over RECORD_STEPS steps (kept on the CPU)."""
    from .activations import stats_nbytes
    return stats_nbytes(RECORD_STEPS, transformer.blocks, 1, transformer.width) / 1e6


def fit_table(fmt: Callable[[str], str] | str = "bf16") -> str:
    """Per model and GPU, the least offloading that fits, with the estimated peak (GiB) in brackets."""
    rows = []
    for name in COMPONENTS:
        sizes = component_sizes(name)
        cells = []
        for gpu in GPUS.values():
            mode = fit(sizes, gpu, fmt)
            cells.append(mode if mode == OFFLOAD_MODES[3] else f"{mode} ({peak_gib(sizes, mode, fmt):.1f})")
        rows.append([f'`"{name}"`', *cells])
    return _markdown(["model", *[f"{g} ({v:.1f} GiB)" for g, v in GPUS.items()]], rows)


def assumptions_text() -> str:
    """The inputs of the arithmetic, as a list (so that the page states them from the code that uses them)."""
    fmts = ", ".join(f"{k} {v:g}" for k, v in WEIGHT_BYTES.items())
    return "\n".join([
        f"- Weights: bfloat16 = {WEIGHT_BYTES['bf16']:g} bytes per value, parameters and buffers alike. For the "
        f"quantised table only `nn.Linear` weights change format (bytes per weight: {fmts}); everything else "
        "stays in bfloat16.",
        f"- Margin: {MARGIN_GIB:g} GiB on top of the weights for one 1024x1024 image (activations, the VAE decode, "
        "the CUDA context). This is an assumption, not a measurement.",
        "- GPU memory as `nvidia-smi` reports it: " + ", ".join(f"{g}: {v:.1f} GiB" for g, v in GPUS.items()) + ".",
        "- Model offload: peak = largest component + margin (one component on the GPU at a time). Sequential "
        "offload: peak = largest single layer + margin.",
    ])


def summary_text() -> str:
    """Computed sentences: per GPU, which models run fully on it, which need model offload."""
    lines = []
    for gpu, gib in GPUS.items():
        by_mode: dict[str, list[str]] = {}
        for name in COMPONENTS:
            by_mode.setdefault(fit(component_sizes(name), gib), []).append(f"`{name}`")
        parts = [f"{mode}: {', '.join(names)}" for mode, names in
                 sorted(by_mode.items(), key=lambda kv: OFFLOAD_MODES.index(kv[0]))]
        lines.append(f"- **{gpu}** (bfloat16) — " + "; ".join(parts) + ".")
    gated = [f"`{n}`" for n, m in MODELS.items() if m.gated]
    lines.append(f"- Licence to accept on the hub before the first download: {', '.join(gated)}.")
    return "\n".join(lines)


def host_ram_text() -> str:
    """Model offload keeps every component in CPU memory: the host needs at least the total weights."""
    rows = ", ".join(f"`{n}` {_gib(sum(s.nbytes() for s in component_sizes(n).values()))} GiB" for n in COMPONENTS)
    return f"CPU memory the offloaded weights occupy (bfloat16): {rows}."


def buffers_text() -> str:
    """Models whose buffers (fixed tables saved with the weights) are large enough to matter."""
    notes = []
    for name in COMPONENTS:
        for attr, s in component_sizes(name).items():
            if s.buffers > 0.01 * s.params:
                notes.append(f"`{name}` {attr}: {s.buffers / 1e9:.2f} B values in buffers "
                             f"({s.buffers * OTHER_BYTES / GIB:.2f} GiB in bfloat16), counted in the memory")
    return ("- " + "\n- ".join(notes)) if notes else "- No component holds buffers above 1% of its parameters."


SECTIONS: dict[str, Callable[[], str]] = {
    "models": models_table,
    "assumptions": assumptions_text,
    "parameters": parameters_table,
    "buffers": buffers_text,
    "fit-bf16": fit_table,
    "fit-4bit": lambda: fit_table(quantised("4-bit")),
    "summary": summary_text,
    "host-ram": host_ram_text,
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", metavar="PAGE", help="refresh the generated blocks of this markdown page")
    args = parser.parse_args(argv)
    if args.write:
        path = Path(args.write)
        old = path.read_text()
        new = render(old)
        path.write_text(new)
        print(f"{path}: {len(generated_blocks(new))} generated blocks, {'changed' if new != old else 'unchanged'}")
    else:
        for name, make in SECTIONS.items():
            print(f"## {name}\n{make()}\n")


if __name__ == "__main__":
    main()
