"""Run a chapter's measurement over a prompt file, one CSV row per (prompt, seed), on one or many processes and GPUs.

    python -m helpers.sweep --measure statistics --prompts prompts/example_prompts.txt --out results.csv
    accelerate launch --num_processes 2 -m helpers.sweep --measure statistics --model flux.1-schnell \\
        --prompts prompts/example_prompts.txt --out results.csv          # one process per GPU

Measures (``MEASURES``): ``statistics`` (chapter 1: per block, the top channel and its ratio to the median channel at
one step), ``disruption`` (chapter 2: pixel change, and on the shapes model correctness, when the top-k / bottom-k /
random-k channels are zeroed), ``clustering`` (chapter 3: K = 2 foreground of the top-k channels per block: its area,
and its IoU with the object on the shapes model) and ``transport`` (chapter 4: lines "source | target"; how far
transporting the source's top-k channels moves the target's image).

How the work is shared: every process reads the prompt file, lists the (prompt, seed) items in file order, drops the
items whose rows are already written, and takes its share with ``accelerate.PartialState().split_between_processes``.
Each process appends its rows, one line per item, to its own shard file ``OUT.parts/shard-<rank>.csv``, so a killed
run loses at most the item in flight; rerunning the same command computes only the missing items. At the end the
main process merges the shards and writes ``OUT`` sorted in file order. Each item is generated alone (batch of one)
from ``torch.Generator().manual_seed(seed)`` and floats are written with 6 significant digits, so a row depends on
its (prompt, seed) only and the table is the same for any number of processes.

On a machine without GPUs, ``accelerate launch --cpu`` starts one process (accelerate runs several CPU processes only
through ``mpirun``); ``accelerate launch --multi_gpu --num_processes N`` starts N CPU processes (torchrun) that this
script joins with the gloo backend.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .models import MODELS, SHAPES_GUIDANCE

IDENTITY = ("prompt", "seed")
FLOAT_FORMAT = ".6g"


# ----------------------------------------------------------------------------------------------- work items

def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts of a text file, one per line, in file order; blank lines and lines starting with "#" are skipped,
    repeated prompts kept once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} not found: give a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = list(dict.fromkeys(p for p in prompts if p and not p.startswith("#")))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts (one per line; '#' starts a comment)")
    return prompts


def work_items(prompts: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """(prompt, seed) pairs in file order, every seed for each prompt."""
    if not seeds:
        raise ValueError("give at least one seed")
    return [(p, int(s)) for p in prompts for s in seeds]


def key_of(row: dict) -> tuple[str, int]:
    return row["prompt"], int(row["seed"])


# ----------------------------------------------------------------------------------------------- rows on disk

def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(float(value), FLOAT_FORMAT)
    return str(value)


def _line(row: dict, fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_format(row[f]) for f in fields])
    return buffer.getvalue()


def append_row(path: Path, row: dict) -> None:
    """Append one row to a CSV shard (writing the header first if the file is new), as one write, flushed: a
    killed process leaves at most a partial last line, which ``read_rows`` ignores and this function cuts off."""
    fields = list(row)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:  # drop a partial last line left by a killed run
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
        header = next(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))), [])
        if header != fields:
            raise ValueError(f"{path} has columns {header} but this run writes {fields}: the shard is from another "
                             "measurement; use another --out")
        text = _line(row, fields)
    else:
        text = _line(dict(zip(fields, fields)), fields) + _line(row, fields)
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows as dicts of strings) of a CSV file; a partial last line (no newline) is ignored."""
    if not path.exists():
        return [], []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    records = list(csv.reader(io.StringIO(text)))
    if not records:
        return [], []
    header = records[0]
    return header, [dict(zip(header, r)) for r in records[1:] if len(r) == len(header)]


def done_keys(parts: Path, out: Path) -> set[tuple[str, int]]:
    """(prompt, seed) of every row already written, in the shards or in the merged table."""
    keys = set()
    for path in [out, *sorted(parts.glob("shard-*.csv"))]:
        keys.update(key_of(r) for r in read_rows(path)[1])
    return keys


def merge(parts: Path, out: Path, items: Sequence[tuple[str, int]]) -> int:
    """Write ``out``: the rows of ``items`` found in the shards (or in an earlier ``out``), in item order, each once.
    Returns the number of rows written."""
    rows, header = {}, None
    for path in [out, *sorted(parts.glob("shard-*.csv"))]:
        h, found = read_rows(path)
        if not found:
            continue
        if header is not None and h != header:
            raise ValueError(f"{path} has columns {h}, other files have {header}; remove the stale file")
        header = h
        for r in found:
            rows.setdefault(key_of(r), r)
    ordered = [rows[k] for k in items if k in rows]
    if header is None:
        return 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r[h] for h in header] for r in ordered)
    os.replace(tmp, out)
    return len(ordered)


# ----------------------------------------------------------------------------------------------- pipelines

def conditional_rows(model: str, n_rows: int, n_prompts: int = 1) -> list[int] | None:
    """The rows of a recorded step that belong to the conditional prompts (see ``helpers.models.MODELS[...]
    .guidance``): all of them without guidance, the second half for batched CFG ([uncond, cond]), the first half
    for two-call true CFG ([cond, uncond]). None means every row."""
    if n_rows == n_prompts:
        return None
    layout = SHAPES_GUIDANCE if model == "shapes" else MODELS[model].guidance
    if n_rows == 2 * n_prompts:
        if "[uncond, cond]" in layout:
            return list(range(n_prompts, 2 * n_prompts))
        if "[cond, uncond]" in layout:
            return list(range(n_prompts))
    raise ValueError(f"{model}: a step has {n_rows} rows for {n_prompts} prompts and the guidance layout "
                     f"{layout!r} does not say which are conditional")


def load(model: str, device, dtype: str | None = None, cpu_offload: bool = False):
    """The pipeline on this process's device: the bundled model, or a hub model by name (helpers.load_pipeline)."""
    from . import load_pipeline
    if torch.device(device).type == "cpu":
        # accelerate's multi-CPU processes report "cpu:0"; some diffusers code paths compare with "cpu" and take
        # another (numerically different) branch, so that one- and many-process runs would differ in the last bits.
        device = torch.device("cpu")
    if model == "shapes":
        return load_pipeline("shapes").to(device)
    torch_dtype = getattr(torch, dtype) if dtype else None
    if cpu_offload:  # each process offloads to its own GPU
        pipe = load_pipeline(model, dtype=torch_dtype, device="cpu")
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return load_pipeline(model, dtype=torch_dtype, device=device)


# ----------------------------------------------------------------------------------------------- measures

@dataclass(frozen=True)
class Measure:
    """``row(pipe, prompt, seed, args, context) -> dict`` of scalar columns; ``prepare(pipe, args, parts, state)``
    returns the context shared by all rows (computed once by the main process and saved with the run)."""

    row: Callable
    prepare: Callable | None = None
    help: str = ""


def _step(args) -> int:
    step = args.steps // 2 if args.step is None else args.step
    if not 0 <= step < args.steps:
        raise ValueError(f"--step {step} is outside the {args.steps} denoising steps")
    return step


def _pipe_kwargs(args, **extra) -> dict:
    return {"num_inference_steps": args.steps, **args.pipe_kwargs, **extra}


def _generate(pipe, prompt: str, seed: int, args, keep_tokens=None, images: bool = False):
    """One recorded generation of one prompt from ``manual_seed(seed)``: (Recording, images or None). Without
    ``images`` the pipeline stops at the latents (no VAE decode)."""
    from .activations import record

    kwargs = _pipe_kwargs(args, output_type="np" if images else "latent")
    with record(pipe, keep_tokens=keep_tokens) as rec:
        out = pipe(prompt=[prompt], generator=torch.Generator().manual_seed(seed), **kwargs)
    return rec, (np.asarray(out.images if hasattr(out, "images") else out[0], np.float32) if images else None)


def statistics_row(pipe, prompt: str, seed: int, args, context=None) -> dict:
    """Chapter 1: per block, the channel with the largest |mean over image tokens| at the chosen step and its ratio
    to the median channel (conditional rows only)."""
    from .channels import channel_statistic, top_k, top_to_median

    step = _step(args)
    rec, _ = _generate(pipe, prompt, seed, args)
    stat = channel_statistic(rec, steps=[step], prompts=conditional_rows(args.model, rec.mean.shape[2]))
    top, ratio = top_k(stat, 1)[:, 0], top_to_median(stat, 1)[:, 0]
    row = {"step": step}
    row.update({f"top_channel@{name}": int(c) for name, c in zip(rec.block_names, top)})
    row.update({f"top_to_median@{name}": float(r) for name, r in zip(rec.block_names, ratio)})
    row["max_top_to_median"] = float(ratio.max())
    return row


def calibration(pipe, args, parts: Path, state) -> torch.Tensor:
    """The channel statistic (blocks, channels) of the calibration prompts (the first ``--calibration-prompts`` of
    the prompt file, generated with ``--calibration-seed``): computed once by the main process, saved with the run,
    loaded by every process, so all rows (also of a resumed run) zero the same channels."""
    from .disruption import calibration_statistic

    path = parts / "calibration.pt"
    if state.is_main_process and not path.exists():
        prompts = read_prompts(args.prompts)[:args.calibration_prompts]
        rows = conditional_rows(args.model, _rows_per_step(pipe, prompts, args), len(prompts))
        stat = calibration_statistic(pipe, prompts, args.calibration_seed, rows=rows, **_pipe_kwargs(args))
        torch.save({"stat": stat, "prompts": prompts, "seed": args.calibration_seed}, path)
    state.wait_for_everyone()
    return torch.load(path)["stat"]


def _rows_per_step(pipe, prompts: list[str], args) -> int:
    """How many rows one denoising step of ``prompts`` has (2x the prompts with classifier-free guidance)."""
    from .activations import record
    kwargs = _pipe_kwargs(args, num_inference_steps=1, output_type="latent")
    with record(pipe) as rec:
        pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **kwargs)
    return rec.mean.shape[2]


def disruption_row(pipe, prompt: str, seed: int, args, stat: torch.Tensor) -> dict:
    """Chapter 2: zero the calibration's top-k, bottom-k and random-k channels in every block and step; per
    condition the mean absolute pixel change against the unmodified image (and, on the shapes model, whether the
    evaluator reads every attribute of the caption right)."""
    from .disruption import control_selections, disruption_table, shapes_score

    selections = control_selections(stat, ks=[args.k], n_random=args.random_draws, seed=0)
    score = shapes_score if args.model == "shapes" else None
    table = disruption_table(pipe, [prompt], selections, seed=seed, score_fn=score, **_pipe_kwargs(args))
    row = {}
    for condition, r in table.iterrows():
        if condition != "baseline":  # the baseline's change against itself is 0 by definition
            row[f"pixel_change@{condition}"] = float(r["pixel_change"])
        if score is not None:
            row[f"all_correct@{condition}"] = bool(r["all"] == 1.0)
    return row


def clustering_row(pipe, prompt: str, seed: int, args, context=None) -> dict:
    """Chapter 3: per block, K = 2 k-means on the image tokens restricted to the prompt's own top-k channels at the
    chosen step; the foreground's share of the tokens, and on the shapes model its IoU with the drawn object."""
    from .channels import channel_statistic, top_k
    from .clustering import clustering_iou, colour_truth, foreground_mask
    from .models import residual_blocks

    step = _step(args)
    blocks = list(range(len(residual_blocks(pipe)))) if args.blocks is None else args.blocks
    rec, images = _generate(pipe, prompt, seed, args, keep_tokens={"steps": [step], "blocks": blocks},
                            images=args.model == "shapes")
    rows = conditional_rows(args.model, rec.mean.shape[2])
    channels = top_k(channel_statistic(rec, steps=[step], prompts=rows), args.k)
    row = {"step": step}
    tokens = {key: t if rows is None else t[rows] for key, t in rec.tokens.items()}
    if args.model == "shapes":
        table = clustering_iou(tokens, colour_truth(images, [prompt]), channels=channels)
        for r in table.itertuples():
            name = rec.block_names[int(r.block)]
            row[f"foreground_area@{name}"] = float(r.area)
            row[f"iou@{name}"] = float(r.iou)
    else:
        for (_, block), t in sorted(tokens.items()):
            mask = foreground_mask(t[0], channels=channels[block])
            row[f"foreground_area@{rec.block_names[block]}"] = float(mask.mean())
    return row


def transport_row(pipe, line: str, seed: int, args, context=None) -> dict:
    """Chapter 4: a line "source | target"; transport the source's top-k channels (per block, from its own plain
    generation) into the target inside the source's K = 2 foreground, in every block and the first half of the
    steps. Mean absolute pixel distances of the plain and the transported target to the source image, and the
    change of the target; on the shapes model, whether the transported image adopts the source's value of the one
    attribute the captions differ in and keeps the others."""
    from .transport import lockstep_transport, massive_channels, plain_generation

    if line.count("|") != 1:
        raise ValueError(f"the transport measure takes lines 'source prompt | target prompt', got {line!r}")
    source, target = (p.strip() for p in line.split("|"))
    kwargs = _pipe_kwargs(args)
    channels = massive_channels(pipe, [source], args.k, seed=seed, **kwargs)
    steps = list(range(args.steps // 2))
    moved = lockstep_transport(pipe, [source], [target], channels, steps=steps, mask="cluster", seed=seed, **kwargs)
    plain = plain_generation(pipe, [target], seed=seed, **kwargs)
    src, after, before = (np.asarray(x, np.float32) for x in (moved.source, moved.target, plain))
    row = {"source_distance_before": float(np.abs(before - src).mean()),
           "source_distance_after": float(np.abs(after - src).mean()),
           "target_change": float(np.abs(after - before).mean())}
    if args.model == "shapes":
        row.update(_shapes_transport_scores(after, source, target))
    return row


def _shapes_transport_scores(images, source: str, target: str) -> dict:
    from .shapes import ATTRIBUTES, parse_caption
    from .transport import transport_scores

    s, t = parse_caption(source), parse_caption(target)
    differ = [a for a in ATTRIBUTES if getattr(s, a) != getattr(t, a)]
    if len(differ) != 1:
        return {"attribute": "", "adopted": float("nan"), "preserved": float("nan")}
    scores = transport_scores(images, [s], [t], differ[0])
    return {"attribute": differ[0], "adopted": bool(scores["adopted"][0]), "preserved": bool(scores["preserved"][0])}


MEASURES: dict[str, Measure] = {
    "statistics": Measure(statistics_row, help="top channel and top/median ratio per block at --step"),
    "disruption": Measure(disruption_row, calibration, "pixel change (and correctness) when top/bottom/random-k "
                                                       "channels are zeroed"),
    "clustering": Measure(clustering_row, help="K=2 foreground of the top-k channels per block (IoU on shapes)"),
    "transport": Measure(transport_row, help="lines 'source | target': how far transport moves the target"),
}

#: Arguments that define the measurement: a resumed run must repeat them (checked against OUT.parts/run.json).
SETTINGS = ("measure", "model", "steps", "step", "k", "blocks", "random_draws", "calibration_prompts",
            "calibration_seed", "pipe_kwargs", "dtype")


# ----------------------------------------------------------------------------------------------- the command

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", required=True, choices=list(MEASURES),
                        help="; ".join(f"{k}: {m.help}" for k, m in MEASURES.items()))
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line ('#' comments)")
    parser.add_argument("--out", required=True, help="the CSV to write; OUT.parts/ keeps the shards for resuming")
    parser.add_argument("--model", default="shapes", choices=["shapes", *MODELS], help="default: the bundled model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds, one row each (default 0)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--step", type=int, default=None, help="the step to measure at (default steps // 2)")
    parser.add_argument("--k", type=int, default=4, help="channels per block (disruption, clustering, transport)")
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="blocks to cluster (default all)")
    parser.add_argument("--random-draws", type=int, default=1, help="random-k control sets (disruption)")
    parser.add_argument("--calibration-prompts", type=int, default=8,
                        help="disruption: choose channels on the first N prompts of the file ...")
    parser.add_argument("--calibration-seed", type=int, default=1_000_000, help="... generated with this seed")
    parser.add_argument("--pipe-kwargs", type=json.loads, default={},
                        help='JSON of extra pipeline arguments, e.g. \'{"guidance_scale": 3.5, "height": 512}\'')
    parser.add_argument("--dtype", default=None, help="hub models: torch dtype name (default bfloat16)")
    parser.add_argument("--cpu-offload", action="store_true", help="hub models: enable_model_cpu_offload()")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if GPUs are present")
    parser.add_argument("--max-items", type=int, default=None,
                        help="compute at most this many items per process, then merge what is done (resume later)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    return args


def _settings(args) -> dict:
    return json.loads(json.dumps({name: getattr(args, name) for name in SETTINGS}))


def write_settings(parts: Path, args) -> None:
    """Record the run's settings on its first run (main process)."""
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / "run.json"
    if not path.exists():
        path.write_text(json.dumps(_settings(args), indent=1))


def check_settings(parts: Path, args) -> None:
    """Refuse to resume a run whose recorded settings differ from these (every process checks, so all stop)."""
    old = json.loads((parts / "run.json").read_text())
    changed = {k: (old.get(k), v) for k, v in _settings(args).items() if old.get(k) != v}
    if changed:
        raise SystemExit(f"{parts} holds a run with other settings {changed} (old, new): rerun with the same "
                         "settings to resume, or choose another --out")


def run(args) -> int:
    """The sweep; returns the number of rows in the merged table."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    use_cpu = args.cpu or not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1", "true", "yes")
    state = PartialState(cpu=use_cpu)
    out = Path(args.out)
    parts = out.with_name(out.name + ".parts")
    items = work_items(read_prompts(args.prompts), args.seeds)
    if state.is_main_process:
        write_settings(parts, args)
    state.wait_for_everyone()
    check_settings(parts, args)
    done = done_keys(parts, out)  # every process reads the same files, before anyone writes
    todo = [item for item in items if item not in done]
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"{len(items)} items, {len(items) - len(todo)} already written, {len(todo)} to compute on "
              f"{state.num_processes} process(es)", flush=True)
    measure = MEASURES[args.measure]
    context = None
    if todo:
        pipe = load(args.model, state.device, args.dtype, args.cpu_offload)
        pipe.set_progress_bar_config(disable=True)
        context = measure.prepare(pipe, args, parts, state) if measure.prepare else None
        shard = parts / f"shard-{state.process_index}.csv"
        with state.split_between_processes(todo) as mine:
            mine = mine[:args.max_items] if args.max_items is not None else mine
            for prompt, seed in tqdm(mine, desc=f"{args.measure} (process 0 of {state.num_processes})",
                                     disable=not state.is_main_process):
                row = measure.row(pipe, prompt, seed, args, context)
                append_row(shard, {"prompt": prompt, "seed": seed, **row})
    state.wait_for_everyone()
    n = 0
    if state.is_main_process:
        n = merge(parts, out, items)
        print(f"{out}: {n} of {len(items)} rows" + ("" if n == len(items) else " (rerun to compute the rest)"),
              flush=True)
    state.wait_for_everyone()
    return n


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
