"""The shapes world and the book model: scenes with ground truth, captions, an evaluator, and a small
Flux-architecture text-to-image pipeline trained on them."""
import os
from pathlib import Path

import torch

from .pipeline import (ShapesPipeline, build_components, build_tokenizer, image_to_latents, latents_to_image, pack,
                       unpack)
from .quality import QUALITY_SEED, generate, held_out_scenes, measure_quality
from .world import (ATTRIBUTES, CANVAS, COLOURS, HELD_OUT, PALETTE, PATTERNS, POSITIONS, SHAPES, SIZES, TEXTURES,
                    UNNAMED, VOCABULARY, WHERE, Scene, agreement, all_scenes, evaluate, evaluate_batch, is_held_out,
                    parse_caption, render, sample_scenes, score, stray_fraction)

#: Where the trained book model lives (package data: installing the package brings it along).
MODEL_DIR = Path(__file__).parent / "model"


def load_shapes_pipeline(path=None) -> ShapesPipeline:
    """The trained book model on CPU, from the package's own files (no network). ``path``: another trained
    pipeline folder; by default the bundled one, or the folder named by the environment variable
    ``FEW_CHANNELS_SHAPES_MODEL`` (how ``tools/compare_models.py`` runs the chapters on a candidate model)."""
    path = path or os.environ.get("FEW_CHANNELS_SHAPES_MODEL") or MODEL_DIR
    if not (Path(path) / "model_index.json").exists():
        raise FileNotFoundError(f"no trained shapes pipeline at {path}; train one with "
                                "`python tools/train_shapes.py --out DIR`")
    pipe = ShapesPipeline.from_pretrained(path, local_files_only=True)
    if pipe.transformer.dtype != torch.float32:  # weights shipped in half precision run in float32 on the CPU
        pipe.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe
