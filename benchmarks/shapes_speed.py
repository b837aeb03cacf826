"""How fast the book model loads and draws on this machine: pipeline load time, and a 20-step generation of
8 images (median of repeats). Run: python benchmarks/shapes_speed.py"""
import argparse
import statistics
import time

import torch

import helpers
from helpers.shapes import load_shapes_pipeline, sample_scenes


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="guidance_scale (other than 1: classifier-free guidance)")
    args = ap.parse_args()
    start = time.perf_counter()
    pipe = load_shapes_pipeline()
    load = time.perf_counter() - start
    captions = [s.caption for s in sample_scenes(args.batch, seed=0)]
    pipe(prompt=captions, num_inference_steps=2, output_type="np")  # warm-up
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        helpers.generate(pipe, captions, seed=i, num_inference_steps=args.steps, guidance_scale=args.guidance)
        times.append(time.perf_counter() - start)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"pipeline load: {load:.2f} s")
    print(f"{args.steps}-step generation of {args.batch} images, guidance {args.guidance}: median "
          f"{statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
