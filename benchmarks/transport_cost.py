"""Cost of transporting massive activations, as ratios over a plain generation of the same targets.

Measured in one run, interleaved (so drifts in machine load hit every variant alike), medians of the repeats:

- plain:     the targets alone, no hooks (``helpers.generate``);
- lockstep:  sources and targets in one batched call, the sources' channels written into the targets in the loop
             (``helpers.transport.lockstep_transport``): about two generations' work (compare "plain, sources +
             targets", the same batch without hooks);
- cached:    the targets alone, the source's channels read from a cache recorded once
             (``helpers.transport.cached_transport``): about one generation's work. The one-off recording
             (``record_source``) is timed too and reported as a ratio of its own: it is paid once per source,
             however many targets reuse it.

Default: the book model on CPU (the bundled weights if present, else a random ShapesPipeline), 20 steps, 8 targets,
the top-4 channels of every block at every step, within the source's K = 2 foreground (``helpers.chapters.
foreground_mask`` of the middle block at the middle step; ``--mask none`` for every token).

    python benchmarks/transport_cost.py [--repeats 9] [--targets 8] [--k 4] [--mask cluster|none]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import helpers
from helpers import chapters
from helpers.chapters import channel_statistic, top_k
from helpers.shapes import MODEL_DIR, ShapesPipeline, build_components, load_shapes_pipeline
from helpers.transport import cached_transport, lockstep_transport, record_source

SOURCE = "a big red circle on the left on a blue background"
TARGETS = ["a big green circle on the left on a blue background",
           "a small red square at the top on a black background",
           "a big yellow triangle in the center on a purple background",
           "a small white circle on the right on a red background",
           "a big orange square at the bottom on a green background",
           "a small blue triangle on the left on a yellow background",
           "a big black circle at the top on a white background",
           "a small purple circle in the center on a orange background"]


def book_pipeline():
    if (Path(MODEL_DIR) / "model_index.json").exists():
        return load_shapes_pipeline(), "bundled shapes model"
    torch.manual_seed(0)
    pipe = ShapesPipeline(**build_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe, "random ShapesPipeline"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (each runs every variant once)")
    parser.add_argument("--targets", type=int, default=8, help="targets per generation")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--k", type=int, default=4, help="massive channels per block")
    parser.add_argument("--mask", choices=("cluster", "none"), default="cluster", help="where to write")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, which = book_pipeline()
    targets = [TARGETS[i % len(TARGETS)] for i in range(args.targets)]
    sources = [SOURCE] * args.targets
    steps = dict(num_inference_steps=args.steps)
    middle = (args.steps // 2, len(helpers.residual_blocks(pipe)) // 2)
    with helpers.record(pipe, keep_tokens={"steps": [middle[0]], "blocks": [middle[1]]}) as rec:
        helpers.generate(pipe, [SOURCE], **steps)
    channels = top_k(channel_statistic(rec.mean), args.k)
    mask = chapters.foreground_mask(rec.tokens[middle][0], channels[middle[1]]) if args.mask == "cluster" else None

    def plain():
        helpers.generate(pipe, targets, **steps)

    def plain_double():  # what lockstep computes, without the transport: sources and targets, no hooks
        helpers.generate(pipe, sources + targets, **steps)

    def recording():
        return record_source(pipe, [SOURCE], channels, **steps)

    cache = recording()

    def lockstep():
        lockstep_transport(pipe, sources, targets, channels, mask=mask, **steps)

    def cached():
        cached_transport(pipe, cache, targets, mask=mask, **steps)

    variants = {"plain": plain, "plain, sources + targets": plain_double, "lockstep": lockstep, "cached": cached,
                "record source (once)": recording}
    for run in variants.values():  # warm-up
        run()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{which}, CPU ({torch.get_num_threads()} threads), {args.steps} steps, {args.targets} targets, "
          f"top-{args.k} channels in all {channels.shape[0]} blocks and steps, mask: {args.mask}")
    print(f"cache: {cache}")
    for name, value in median.items():
        print(f"{name:<26} median {value:.4f} s   (min {min(times[name]):.4f})")
    for name in ("plain, sources + targets", "lockstep", "cached"):
        print(f"{name + ' / plain:':<30} {median[name] / median['plain']:.2f}x")
    print(f"(medians of {args.repeats} interleaved rounds, the same {args.targets} targets in every variant)")
    print(f"recording one source / plain generation of {args.targets} targets: "
          f"{median['record source (once)'] / median['plain']:.2f}x (paid once per source)")


if __name__ == "__main__":
    main()
