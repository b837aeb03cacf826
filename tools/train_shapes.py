"""Train the book model from a seed: ``python tools/train_shapes.py --out DIR``.

Rectified flow in pixel space: x_t = (1 - t) x_0 + t * noise, and the transformer predicts noise - x_0.
Captions are dropped 5% of the time so classifier-free guidance is available. The saved pipeline holds the
EMA weights. ``DIR/train_log.jsonl`` logs the loss, and at intervals the massive-activation ratio (per block, the
top channel's |mean over image tokens| over the median channel's, at t = 0.5). Rerunning with the same
arguments resumes from ``DIR/checkpoint.pt``. The learning rate is constant after warm-up until ``--decay-start``,
then follows a half cosine to zero at ``--steps``; before the decay a run stopped at step N equals a run asked for N
steps, so a constant-rate run can be resumed with a decay added.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.shapes.pipeline import MAX_TOKENS, ShapesPipeline, build_components, image_ids, pack
from helpers.shapes.world import HELD_OUT, render, sample_scenes

EVAL_CAPTIONS_SEED = 1234


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the pipeline, log and checkpoint")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay-start", type=int, default=None,
                   help="step where the learning rate starts a cosine decay to zero at --steps (default: no decay)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", type=int, default=1, choices=(1, 2),
                   help="shapes world version: 2 adds background stripes and object patterns no caption names")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--double", type=int, default=3)
    p.add_argument("--single", type=int, default=3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    return p.parse_args(argv)


def massive_ratios(pipe: ShapesPipeline, scenes: list, t: float = 0.5, seed: int = 0) -> list[dict]:
    """Per block at time t: the top channel of |mean over image tokens| and its ratio to the median channel,
    on the scenes' renders noised to time t under their own captions."""
    device = pipe.transformer.device
    outputs = []
    blocks = list(pipe.transformer.transformer_blocks) + list(pipe.transformer.single_transformer_blocks)
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append(o[1].detach())) for b in blocks]
    try:
        g = torch.Generator().manual_seed(seed)
        x0 = pack(torch.from_numpy(render(scenes)).permute(0, 3, 1, 2) * 2 - 1)
        noise = torch.randn(x0.shape, generator=g)
        xt = ((1 - t) * x0 + t * noise).to(device)
        with torch.no_grad():
            emb, pooled = pipe.encode_prompt([s.caption for s in scenes], device)
            pipe.transformer(hidden_states=xt, encoder_hidden_states=emb, pooled_projections=pooled,
                             timestep=torch.full((len(scenes),), t, device=device), img_ids=image_ids().to(device),
                             txt_ids=torch.zeros(MAX_TOKENS, 3, device=device))
    finally:
        for h in hooks:
            h.remove()
    result = []
    for out in outputs:
        stat = out.float().mean(1).abs().mean(0)  # |mean over image tokens|, averaged over prompts
        top = int(stat.argmax())
        result.append({"top": top, "ratio": float(stat[top] / stat.median())})
    return result


def lr_factor(step: int, args) -> float:
    """Linear warm-up, constant, then (from ``decay_start``) a half cosine down to zero at the last step."""
    warm = min(1.0, (step + 1) / args.warmup)
    if args.decay_start is None or step < args.decay_start:
        return warm
    progress = min(1.0, (step - args.decay_start) / max(1, args.steps - args.decay_start))
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    comps = build_components(args.width, args.heads, args.double, args.single)
    pipe = ShapesPipeline(**comps, world=args.world).to(args.device)
    trainable = [pipe.transformer, pipe.text_encoder]
    params = [p for m in trainable for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args))
    ema = copy.deepcopy(trainable)
    for m in ema:
        m.requires_grad_(False)
    ema_pipe = ShapesPipeline(transformer=ema[0], text_encoder=ema[1], tokenizer=pipe.tokenizer,
                              scheduler=pipe.scheduler, world=args.world)
    step = 0
    ckpt = args.out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=args.device, weights_only=False)
        for m, s in zip(trainable + ema, state["models"]):
            m.load_state_dict(s)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = state["step"]
        print(f"resumed from {ckpt} at step {step}")
    (args.out / "train_config.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {
            "held_out": list(HELD_OUT), "params_transformer": sum(p.numel() for p in pipe.transformer.parameters()),
            "params_text_encoder": sum(p.numel() for p in pipe.text_encoder.parameters())}, indent=1))
    eval_scenes = sample_scenes(32, EVAL_CAPTIONS_SEED, exclude=HELD_OUT, world=args.world)
    log = open(args.out / "train_log.jsonl", "a")
    img_ids = image_ids().to(args.device)
    txt_ids = torch.zeros(MAX_TOKENS, 3, device=args.device)
    losses, t0 = [], time.time()
    bar = tqdm(total=args.steps, initial=step, desc="training")
    while step < args.steps:
        scenes = sample_scenes(args.batch_size, seed=args.seed * 1_000_003 + step, exclude=HELD_OUT,
                               world=args.world)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        captions = [s.caption if torch.rand((), generator=g) >= args.caption_dropout else "" for s in scenes]
        x0 = pack(torch.from_numpy(render(scenes)).permute(0, 3, 1, 2) * 2 - 1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=g))  # logit-normal times, as SD3
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        x0, noise, xt, t = (v.to(args.device) for v in (x0, noise, xt, t))
        emb, pooled = pipe.encode_prompt(captions, args.device)
        pred = pipe.transformer(hidden_states=xt, encoder_hidden_states=emb, pooled_projections=pooled, timestep=t,
                                img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, e in zip(trainable, ema):
                for p, q in zip(m.parameters(), e.parameters()):
                    q.lerp_(p, 1 - decay)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % args.log_every == 0 or step == args.steps:
            entry = {"step": step, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                     "seconds": time.time() - t0}
            losses = []
            if step % args.save_every == 0 or step == args.steps:
                entry["massive"] = massive_ratios(ema_pipe, eval_scenes)
            log.write(json.dumps(entry) + "\n")
            log.flush()
        if step % args.save_every == 0 or step == args.steps:
            ema_pipe.save_pretrained(args.out)
            torch.save({"models": [m.state_dict() for m in trainable + ema], "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step}, ckpt)
    bar.close()
    ema_pipe.save_pretrained(args.out)
    print(f"saved the pipeline (EMA weights) to {args.out}")


if __name__ == "__main__":
    main()
