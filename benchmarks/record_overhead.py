"""Cost of ``helpers.record`` and of ``helpers.intervene`` (an edit zeroing 4 channels of every block) against a
plain generation, as ratios measured in one run.

Plain, recorded and intervened generations are interleaved (so drifts in machine load hit all alike) and each ratio
is the median recorded (or intervened) time over the median plain time. Default: the book model on CPU (the bundled
weights if present, else a random ShapesPipeline), 20 steps, batch 8, one torch thread. ``--full-flux``: a
full-size FLUX.1 transformer (3072 wide, 19 + 38 blocks) with random bf16 weights in ``FluxPipeline`` at 1024x1024
(4096 image tokens), 28 steps, on a GPU.

    python benchmarks/record_overhead.py [--repeats 15] [--threads 1] [--full-flux]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import helpers
from helpers import stats_nbytes
from helpers.shapes import MODEL_DIR, ShapesPipeline, build_components, load_shapes_pipeline


def shapes_generation(batch: int, steps: int):
    if (Path(MODEL_DIR) / "model_index.json").exists():
        pipe, which = load_shapes_pipeline(), "bundled shapes model"
    else:
        torch.manual_seed(0)
        pipe, which = ShapesPipeline(**build_components()), "random ShapesPipeline"
        pipe.set_progress_bar_config(disable=True)
    prompts = ["a big red circle on the left on a blue background"] * batch
    embeds, pooled = pipe.encode_prompt(prompts)  # encode once: time the denoising loop the hooks affect

    def generate():
        pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=steps,
             generator=helpers.generators(batch), output_type="latent")
    return pipe, generate, f"{which}, CPU, {steps} steps, batch {batch}"


def full_flux_generation(batch: int, steps: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    if not torch.cuda.is_available():
        raise SystemExit("--full-flux needs a CUDA GPU (about 24 GB for the bf16 weights)")
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):  # FLUX.1-dev's transformer config, random weights, built directly on the GPU
            transformer = FluxTransformer2DModel(guidance_embeds=True)
    finally:
        torch.set_default_dtype(default_dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                        vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(batch, 512, 4096, device="cuda", dtype=torch.bfloat16)
    pooled = torch.randn(batch, 768, device="cuda", dtype=torch.bfloat16)

    def generate():
        pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=1024, width=1024, num_inference_steps=steps,
             guidance_scale=3.5, generator=torch.Generator("cuda").manual_seed(0), output_type="latent")
        torch.cuda.synchronize()
    return pipe, generate, f"FLUX.1-size random bf16 transformer, {torch.cuda.get_device_name()}, 1024x1024, " \
                           f"{steps} steps, batch {batch}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-flux", action="store_true", help="full-size FLUX.1 transformer on a GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 CPU, 3 GPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20 CPU, 28 GPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per generation (default 8 CPU, 1 GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 for the book model: on a shared 2-core machine more threads "
                             "oversubscribe the cores and the timings measure contention, not recording)")
    args = parser.parse_args()
    if args.threads or not args.full_flux:
        torch.set_num_threads(args.threads or 1)
    if args.full_flux:
        steps, batch, repeats = args.steps or 28, args.batch or 1, args.repeats or 3
        pipe, generate, what = full_flux_generation(batch, steps)
    else:
        steps, batch, repeats = args.steps or 20, args.batch or 8, args.repeats or 15
        pipe, generate, what = shapes_generation(batch, steps)

    def recorded():
        with helpers.record(pipe) as rec:
            generate()
        return rec

    def zero_top(x, site):  # an edit through helpers.intervene: the 4 channels of every block with top[] set to 0
        return x.index_fill(-1, top[site.block].to(x.device), 0.0)

    def intervened():
        with helpers.intervene(pipe, edit=zero_top):
            generate()

    top = helpers.top_k(helpers.channel_statistic(recorded().mean), 4)  # warm-up, and the channels to zero
    generate(), intervened()
    variants = {"plain": generate, "recorded": recorded, "intervened": intervened}
    rec = None
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}  # process CPU time: less sensitive than wall time to other jobs' load
    for _ in range(repeats):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            result = run()
            rec = result if name == "recorded" else rec
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    n_blocks, width = len(helpers.residual_blocks(pipe)), helpers.hidden_width(pipe)
    median = statistics.median
    print(what, f"({torch.get_num_threads()} torch threads)")
    for name in wall:
        print(f"{name:9s} wall median {median(wall[name]):.4f} s (min {min(wall[name]):.4f}), "
              f"CPU median {median(cpu[name]):.4f} s")
    for name in ("recorded", "intervened"):
        print(f"ratio {name} / plain: {median(wall[name]) / median(wall['plain']):.3f} wall time, "
              f"{median(cpu[name]) / median(cpu['plain']):.3f} CPU time (medians of {repeats} interleaved rounds)")
    print(f"statistics of this run: {tuple(rec.mean.shape)} x 3, "
          f"{stats_nbytes(steps, n_blocks, batch, width) / 1e6:.2f} MB")
    print(f"FLUX.1 1024x1024, 28 steps, one image: {stats_nbytes(28, 57, 1, 3072) / 1e6:.1f} MB of statistics")


if __name__ == "__main__":
    main()
