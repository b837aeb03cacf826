"""Cost of transporting massive activations, as ratios over a plain generation of the same target batch.

Measured in one run, interleaved (so drifts in machine load hit every variant alike), medians of the repeats:

- plain:     the targets alone, no hooks;
- lockstep:  sources and targets in one batched call, the sources' channels transported in the loop
             (``lockstep_transport``): about two generations' work, plus the k-means of the spatial mask at every
             block and step (also timed with the masks given);
- cached:    the targets alone, the source's channels read from a cache recorded once (``cached_transport``):
             about one generation's work. The one-off recording (``record_source``) is timed too and reported as a
             ratio of its own: it is paid once per source, however many targets reuse it.

Default: the book model on CPU (the bundled weights if present, else a random ShapesPipeline), 20 steps, 8 targets,
the top-4 channels of every block at every step, within the source's K = 2 foreground cluster (``--mask none`` for
every token).

    python benchmarks/transport_cost.py [--repeats 9] [--targets 8] [--k 4] [--mask cluster|none]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from helpers.transport import (cached_transport, cluster_masks, lockstep_transport, massive_channels,
                               plain_generation, record_source)

SOURCE = "a big red circle on the left on a blue background"
TARGETS = ["a big green circle on the left on a blue background", "a small red square at the top on a black background",
           "a big yellow triangle in the center on a purple background", "a small white circle on the right on a red "
           "background", "a big orange square at the bottom on a green background", "a small blue triangle on the "
           "left on a yellow background", "a big black circle at the top on a white background", "a small purple "
           "circle in the center on a orange background"]


def book_pipeline():
    from helpers.shapes import MODEL_DIR, ShapesPipeline, build_components, load_shapes_pipeline
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
    parser.add_argument("--mask", choices=("cluster", "none"), default="cluster", help="spatial mask")
    args = parser.parse_args()
    pipe, which = book_pipeline()
    targets = [TARGETS[i % len(TARGETS)] for i in range(args.targets)]
    sources = [SOURCE] * args.targets
    steps = dict(num_inference_steps=args.steps)
    channels = massive_channels(pipe, targets, k=args.k, **steps)

    def plain():
        plain_generation(pipe, targets, **steps)

    def plain_double():  # what lockstep computes, without the transport: sources and targets, no hooks
        plain_generation(pipe, sources + targets, **steps)

    def recording():
        return record_source(pipe, [SOURCE], channels, **steps)

    cache = recording()
    masks = cluster_masks(cache) if args.mask == "cluster" else None

    def lockstep():  # the spatial mask computed in the loop (k-means at every block and step)
        lockstep_transport(pipe, sources, targets, channels, mask="cluster" if args.mask == "cluster" else None,
                           **steps)

    def lockstep_given_masks():  # the same masks, given
        lockstep_transport(pipe, sources, targets, channels, mask=masks, **steps)

    def cached():
        cached_transport(pipe, cache, targets, mask=masks, **steps)

    variants = {"plain": plain, "plain, sources + targets": plain_double, "lockstep": lockstep, "lockstep, masks given": lockstep_given_masks,
                "cached": cached, "record source (once)": recording}
    if args.mask == "none":
        del variants["lockstep, masks given"]
    for run in variants.values():  # warm-up
        run()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{which}, CPU ({torch.get_num_threads()} threads), {args.steps} steps, {args.targets} targets, top-{args.k} "
          f"channels in all {channels.shape[0]} blocks and steps, mask: {args.mask}")
    print(f"cache: {cache}")
    for name, value in median.items():
        print(f"{name:<26} median {value:.4f} s   (min {min(times[name]):.4f})")
    for name in variants:
        if name not in ("plain", "record source (once)"):
            print(f"{name + ' / plain:':<30} {median[name] / median['plain']:.2f}x")
    print(f"(medians of {args.repeats} interleaved rounds, the same {args.targets} targets in every variant)")
    print(f"recording one source / plain generation of {args.targets} targets: "
          f"{median['record source (once)'] / median['plain']:.2f}x (paid once per source)")


if __name__ == "__main__":
    main()
