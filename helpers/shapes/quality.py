"""How well the book model draws what its captions say, read back by the evaluator."""
from __future__ import annotations

import numpy as np

from ..seeding import generators
from .world import HELD_OUT, Scene, all_scenes, evaluate_batch, is_held_out, parse_caption, sample_scenes, score

#: Seed of the 512 captions the quality figure is measured on; no test or chapter samples with it otherwise.
QUALITY_SEED = 512_512


def generate(pipe, captions: list[str], seed: int = 0, num_inference_steps: int = 20, batch_size: int = 64,
             **kwargs) -> np.ndarray:
    """Images (N, 32, 32, 3) in [0, 1] for many captions, in batches; row i starts from ``manual_seed(seed + i)``
    (the book's seeding rule, ``helpers.seeding``), whatever the batch size."""
    out = [pipe(prompt=captions[i:i + batch_size], num_inference_steps=num_inference_steps, output_type="np",
                generator=generators(len(captions[i:i + batch_size]), seed + i), **kwargs).images
           for i in range(0, len(captions), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 32, 32, 3), np.float32)


def held_out_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` nominal scenes drawn (with replacement) from the held-out combinations only."""
    pool = [s for s in all_scenes() if is_held_out(s, HELD_OUT)]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.integers(len(pool), size=n)]


def measure_quality(pipe, n: int = 512, seed: int = QUALITY_SEED, num_inference_steps: int = 20,
                    n_held_out: int = 128, **kwargs) -> dict:
    """Per-attribute accuracy (and all-correct) on ``n`` sampled training-distribution captions, and separately on
    ``n_held_out`` captions of the held-out combinations (never seen in training)."""
    seen = [s.caption for s in sample_scenes(n, seed, exclude=HELD_OUT)]
    unseen = [s.caption for s in held_out_scenes(n_held_out, seed)]
    result = {}
    for name, captions in (("seen", seen), ("held_out", unseen)):
        images = generate(pipe, captions, seed=seed, num_inference_steps=num_inference_steps, **kwargs)
        result[name] = score(evaluate_batch(images), [parse_caption(c) for c in captions])
    return result
