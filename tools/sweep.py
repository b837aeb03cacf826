"""Run a chapter's measurement over a prompt file, one CSV row per (prompt, seed), on one or many processes and GPUs.

    python tools/sweep.py --measure statistics --prompts prompts/example_prompts.txt --out results.csv
    accelerate launch --num_processes 2 tools/sweep.py --measure statistics --model sana-1.5 \\
        --prompts prompts/example_prompts.txt --out results.csv          # one process per GPU

Measures (``MEASURES``), written with the book's own pieces (``helpers.record``, ``helpers.intervene``, the
functions the chapters export to ``helpers.chapters``, ``helpers.transport``): ``statistics`` (chapter 1: per block,
the top channel and its ratio to the median channel at one step), ``disruption`` (chapter 2: pixel change, and on the
shapes model correctness, when the top-k / bottom-k / random-k channels are zeroed), ``clustering`` (chapter 3:
K = 2 foreground of the top-k channels per block: its area, and its IoU with the drawn object on the shapes model)
and ``transport`` (chapter 4: lines "source | target"; how far transporting the source's top-k channels moves the
target's image). Every generation passes ``helpers.sampling_settings(MODEL)``, with ``--steps`` and ``--pipe-kwargs``
on top; ``OUT.parts/run.json`` records the arguments the pipeline was called with.

How the work is shared: every process reads the prompt file, lists the (prompt, seed) items in file order, drops the
items whose rows are already written, and takes its share with ``accelerate.PartialState().split_between_processes``.
Each process holds a lock on ``OUT.parts/lock-<rank>`` for the whole run (a second sweep on the same ``--out`` stops
at once instead of mixing its lines into the shards) and appends its rows, one line per item, to its own shard
``OUT.parts/shard-<rank>.csv``, so a killed run loses at most the item in flight; rerunning the same command computes
only the missing items. At the end the main process merges the shards and writes ``OUT`` in file order. Each item is
generated alone (batch of one) with the book's seeding rule (``helpers.generators(1, seed)``: ``manual_seed(seed)``)
and floats are written with 6 significant digits, so a row depends on its (prompt, seed) only and the table is the
same for any number of processes.

On a machine without GPUs, ``accelerate launch --cpu`` starts one process (accelerate runs several CPU processes only
through ``mpirun``); ``accelerate launch --multi_gpu --num_processes N`` starts N CPU processes (torchrun) that this
script joins with the gloo backend.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import helpers
from helpers import chapters  # the functions the chapters teach (foreground_mask: chapter 3)
from helpers.chapters import bottom_k, channel_statistic, random_k, top_k, top_to_median
from helpers.masks import iou, token_to_pixels
from helpers.models import MODELS, conditional_rows
from helpers.shapes import ATTRIBUTES, evaluate, parse_caption
from helpers.transport import lockstep_transport

FLOAT_FORMAT = ".6g"
#: Pipeline arguments the sweep sets itself; --pipe-kwargs may not give them.
RESERVED = ("prompt", "prompt_embeds", "generator", "latents", "output_type", "num_inference_steps", "return_dict",
            "callback_on_step_end")


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


def _elements(value) -> int | None:
    """Elements of a tensor or array (None for anything else)."""
    return value.numel() if torch.is_tensor(value) else value.size if isinstance(value, np.ndarray) else None


def as_int(value, what: str = "value") -> int:
    """An integer from a Python, numpy or one-element tensor integer; bools, floats and the rest are refused."""
    if _elements(value) is not None:
        if _elements(value) != 1 or value.dtype in (torch.bool, np.bool_):
            raise TypeError(f"{what} must be an integer, got {value!r}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def work_items(prompts: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """(prompt, seed) pairs in file order, every seed for each prompt."""
    seeds = [as_int(s, "a seed") for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    return [(p, s) for p in prompts for s in seeds]


# ----------------------------------------------------------------------------------------------- rows on disk

def _format(value) -> str:
    """One CSV cell: Python, numpy and one-element tensor numbers alike (bools as 0/1, NaN as empty), or a string."""
    if _elements(value) is not None:
        if _elements(value) != 1:
            raise TypeError(f"a column value must be one number, got an array of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, FLOAT_FORMAT)
    if isinstance(value, str):
        return value
    raise TypeError(f"a column value must be a number or a string, got {type(value).__name__}")


def _line(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_format(v) for v in values])
    return buffer.getvalue()


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows as dicts of strings) of a CSV file; a partial last line (no newline) is ignored. A line that
    repeats the header, or whose seed is not an integer, is an error that names the file and the line."""
    if not path.exists():
        return [], []
    text = path.read_text(encoding="utf-8")
    records = list(csv.reader(io.StringIO(text[:text.rfind("\n") + 1])))
    if not records:
        return [], []
    header, rows = records[0], []
    for number, record in enumerate(records[1:], start=2):
        if len(record) != len(header):
            continue
        row = dict(zip(header, record))
        if not row.get("seed", "").lstrip("-").isdigit():
            raise ValueError(f"{path}, line {number}, is not a row of this table ({record[:2]}...): delete that "
                             f"line (its item is then computed again) or delete {path}")
        rows.append(row)
    return header, rows


def append_row(path: Path, row: dict) -> None:
    """Append one row to a CSV shard (writing the header first if the file is new), as one write, flushed: a
    killed process leaves at most a partial last line, which ``read_rows`` ignores and this function cuts off."""
    fields = list(row)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:  # drop a partial last line left by a killed run
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
        header = read_rows(path)[0]
        if header and header != fields:
            raise ValueError(f"{path} has the columns {header}, but this run writes {fields}: delete {path} (its "
                             "rows are then computed again) or choose another --out")
        text = _line(row.values()) if header else _line(fields) + _line(row.values())
    else:
        text = _line(fields) + _line(row.values())
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()


def key_of(row: dict) -> tuple[str, int]:
    return row["prompt"], int(row["seed"])


def _tables(parts: Path, out: Path) -> list[Path]:
    return [out, *sorted(parts.glob("shard-*.csv"))]


def done_keys(parts: Path, out: Path) -> set[tuple[str, int]]:
    """(prompt, seed) of every row already written, in the shards or in the merged table."""
    return {key_of(r) for path in _tables(parts, out) for r in read_rows(path)[1]}


def merge(parts: Path, out: Path, items: Sequence[tuple[str, int]]) -> int:
    """Write ``out``: the rows of ``items`` found in the shards (or in an earlier ``out``), in item order, each once.
    Returns the number of rows written."""
    rows, header, first = {}, None, None
    for path in _tables(parts, out):
        h, found = read_rows(path)
        if not found:
            continue
        if header is not None and h != header:
            raise ValueError(f"{path} has the columns {h} but {first} has {header}: delete the file that is not "
                             "from this run (its rows are then computed again) or choose another --out")
        header, first = h, first or path
        for r in found:
            rows.setdefault(key_of(r), r)
    if header is None:
        return 0
    ordered = [rows[k] for k in items if k in rows]
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([r[h] for h in header] for r in ordered)
    os.replace(tmp, out)
    return len(ordered)


@contextlib.contextmanager
def lock(parts: Path, rank: int):
    """Hold ``parts/lock-<rank>`` while this process runs: a second sweep on the same --out stops here."""
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / f"lock-{rank}"
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise SystemExit(f"another sweep ({f.read().strip() or 'a running process'}) is writing {parts} (it holds "
                             f"{path}): wait for it to finish, then rerun to resume, or choose another --out") from None
        f.truncate(0)
        f.write(f"process {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------- pipelines

def load(model: str, device, dtype: str | None = None, cpu_offload: bool = False):
    """The pipeline on this process's device: the bundled model, or a hub model by name (helpers.load_pipeline)."""
    if torch.device(device).type == "cpu":
        # accelerate's multi-CPU processes report "cpu:0"; some diffusers code paths compare with "cpu" and take
        # another (numerically different) branch, so that one- and many-process runs would differ in the last bits.
        device = torch.device("cpu")
    if model == "shapes":
        return helpers.load_pipeline("shapes", device=device)
    torch_dtype = getattr(torch, dtype) if dtype else None
    if cpu_offload:  # each process offloads to its own GPU
        pipe = helpers.load_pipeline(model, dtype=torch_dtype, device="cpu", cpu_offload=False)
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return helpers.load_pipeline(model, dtype=torch_dtype, device=device, cpu_offload=False)


def _generate(pipe, prompts: list[str], seed: int, args, keep_tokens=None):
    """(Recording, images (rows, H, W, 3)) of one recorded generation with the book's seeding rule."""
    with helpers.record(pipe, keep_tokens=keep_tokens) as rec:
        images = helpers.generate(pipe, prompts, seed, **args.pipe_kwargs)
    return rec, np.asarray(images, np.float32)


def _conditional(rec, args, n_images: int = 1) -> list[int]:
    """The rows of a step that belong to the images (with guidance: the conditional ones), from MODELS."""
    return conditional_rows(MODELS[args.model].guidance, rec.calls[0], n_images)


def _right(image, caption: str) -> bool:
    """Shapes world: whether the evaluator reads every attribute of the caption from the image."""
    read, truth = evaluate(image), parse_caption(caption)
    return all(read[a] == getattr(truth, a) for a in ATTRIBUTES)


# ----------------------------------------------------------------------------------------------- measures

@dataclass(frozen=True)
class Measure:
    """``row(pipe, prompt, seed, args, context) -> dict`` of scalar columns; ``prepare(pipe, args, parts, state)``
    returns the context shared by all rows (computed once by the main process and saved with the run)."""

    row: Callable
    prepare: Callable | None = None
    help: str = ""


def statistics_row(pipe, prompt: str, seed: int, args, context=None) -> dict:
    """Chapter 1: per block, the channel with the largest |mean over image tokens| at the chosen step and its ratio
    to the median channel (conditional rows only)."""
    rec, _ = _generate(pipe, [prompt], seed, args)
    stat = channel_statistic(rec.mean, steps=[args.step], rows=_conditional(rec, args))
    top, ratio = top_k(stat, 1)[:, 0], top_to_median(stat, 1)[:, 0]
    row = {"step": args.step}
    row.update({f"top_channel@{label}": c for label, c in zip(rec.labels, top)})
    row.update({f"top_to_median@{label}": r for label, r in zip(rec.labels, ratio)})
    row["max_top_to_median"] = ratio.max()
    return row


def calibration(pipe, args, parts: Path, state) -> torch.Tensor:
    """The channel statistic (blocks, channels) over every step of the calibration prompts (the first
    ``--calibration-prompts`` of the file, generated with ``--calibration-seed``): computed once by the main
    process, saved with the run, loaded by every process, so all rows (also of a resumed run) use the same channels."""
    path = parts / "calibration.pt"
    if state.is_main_process and not path.exists():
        prompts = read_prompts(args.prompts)[:args.calibration_prompts]
        rec, _ = _generate(pipe, prompts, args.calibration_seed, args)
        stat = channel_statistic(rec.mean, rows=_conditional(rec, args, len(prompts)))
        torch.save({"stat": stat, "prompts": prompts, "seed": args.calibration_seed}, path)
    state.wait_for_everyone()
    return torch.load(path)["stat"]


def disruption_row(pipe, prompt: str, seed: int, args, stat: torch.Tensor) -> dict:
    """Chapter 2: zero the calibration's top-k, bottom-k and random-k channels in every block and step; per set the
    mean absolute pixel change against the unmodified image (and, on the shapes model, whether the evaluator reads
    every attribute of the caption right)."""
    k, top = args.k, top_k(stat, args.k)
    sets = {f"top-{k}": top, f"bottom-{k}": bottom_k(stat, k)}
    sets.update({f"random-{k}#{i}": random_k(stat, k, seed=1000 * k + i, exclude=top)
                 for i in range(args.random_draws)})
    base = np.asarray(helpers.generate(pipe, [prompt], seed, **args.pipe_kwargs), np.float32)
    row = {"all_correct@baseline": _right(base[0], prompt)} if args.model == "shapes" else {}
    for name, channels in sets.items():
        with helpers.intervene(pipe, channels=channels, mode="zero"):
            images = np.asarray(helpers.generate(pipe, [prompt], seed, **args.pipe_kwargs), np.float32)
        row[f"pixel_change@{name}"] = float(np.abs(images - base).mean())
        if args.model == "shapes":
            row[f"all_correct@{name}"] = _right(images[0], prompt)
    return row


def clustering_row(pipe, prompt: str, seed: int, args, context=None) -> dict:
    """Chapter 3: per block, K = 2 k-means on the image tokens restricted to the prompt's own top-k channels at the
    chosen step; the foreground's share of the tokens, and on the shapes model its IoU with the drawn object."""
    blocks = args.blocks if args.blocks is not None else list(range(len(helpers.residual_blocks(pipe))))
    rec, images = _generate(pipe, [prompt], seed, args, keep_tokens={"steps": [args.step], "blocks": blocks})
    cond = _conditional(rec, args)
    channels = top_k(channel_statistic(rec.mean, steps=[args.step], rows=cond), args.k)
    truth = evaluate(images[0])["mask"] if args.model == "shapes" else None
    row = {"step": args.step}
    for b in blocks:
        mask = chapters.foreground_mask(rec.tokens[args.step, b][cond[0]].float(), channels[b])
        row[f"foreground_area@{rec.labels[b]}"] = mask.float().mean()
        if truth is not None:
            row[f"iou@{rec.labels[b]}"] = iou(token_to_pixels(mask, images.shape[1] // round(len(mask) ** 0.5)),
                                              truth)
    return row


def transport_row(pipe, line: str, seed: int, args, context=None) -> dict:
    """Chapter 4: a line "source | target"; transport the source's top-k channels (per block, from its own recorded
    generation) into the target within the source's K = 2 foreground (``--mask cluster``, from the middle block at
    ``--step``) or on every token (``--mask none``), in every block and the first half of the steps. Mean absolute
    pixel distances of the plain and the transported target to the source image, and the change of the target; on
    the shapes model, whether the transported image takes the source's value of the one attribute the captions
    differ in and keeps the others."""
    if line.count("|") != 1:
        raise ValueError(f"the transport measure takes lines 'source prompt | target prompt', got {line!r}")
    source, target = (p.strip() for p in line.split("|"))
    middle = len(helpers.residual_blocks(pipe)) // 2
    rec, _ = _generate(pipe, [source], seed, args, keep_tokens={"steps": [args.step], "blocks": [middle]})
    cond = _conditional(rec, args)
    channels = top_k(channel_statistic(rec.mean, rows=cond), args.k)
    tokens = rec.tokens[args.step, middle][cond[0]].float()
    mask = chapters.foreground_mask(tokens, channels[middle]) if args.mask == "cluster" else None
    moved = lockstep_transport(pipe, [source], [target], channels, steps=range(max(1, args.steps // 2)), mask=mask,
                               seed=seed, **args.pipe_kwargs)
    plain = helpers.generate(pipe, [target], seed, **args.pipe_kwargs)
    src, after, before = (np.asarray(x, np.float32) for x in (moved.source, moved.target, plain))
    row = {"source_distance_before": float(np.abs(before - src).mean()),
           "source_distance_after": float(np.abs(after - src).mean()),
           "target_change": float(np.abs(after - before).mean())}
    if args.model == "shapes":
        s, t, read = parse_caption(source), parse_caption(target), evaluate(after[0])
        differ = [a for a in ATTRIBUTES if getattr(s, a) != getattr(t, a)]
        one = len(differ) == 1
        row.update(attribute=differ[0] if one else "",
                   adopted=read[differ[0]] == getattr(s, differ[0]) if one else float("nan"),
                   preserved=all(read[a] == getattr(t, a) for a in ATTRIBUTES if a not in differ) if one else
                   float("nan"))
    return row


MEASURES: dict[str, Measure] = {
    "statistics": Measure(statistics_row, help="top channel and top/median ratio per block at --step"),
    "disruption": Measure(disruption_row, calibration, "pixel change (and correctness) when top/bottom/random-k "
                                                       "channels are zeroed"),
    "clustering": Measure(clustering_row, help="K=2 foreground of the top-k channels per block (IoU on shapes)"),
    "transport": Measure(transport_row, help="lines 'source | target': how far transport moves the target"),
}

#: Arguments that define the measurement: a resumed run must repeat them (checked against OUT.parts/run.json).
SETTINGS = ("measure", "model", "steps", "step", "k", "blocks", "random_draws", "calibration_prompts",
            "calibration_seed", "mask", "dtype", "pipe_kwargs")


# ----------------------------------------------------------------------------------------------- the command

def parse_args(argv=None) -> argparse.Namespace:
    """The command line, checked and resolved: ``steps`` and ``step`` as they will run, and ``pipe_kwargs`` the
    full pipeline arguments (the model's sampling settings, ``--steps``, then ``--pipe-kwargs``)."""
    parser = argparse.ArgumentParser(prog="python tools/sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", required=True, choices=list(MEASURES),
                        help="; ".join(f"{k}: {m.help}" for k, m in MEASURES.items()))
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line ('#' comments)")
    parser.add_argument("--out", required=True, help="the CSV to write; OUT.parts/ keeps the shards for resuming")
    parser.add_argument("--model", default="shapes", choices=list(MODELS), help="default: the bundled model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="noise seeds, one row each (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's settings)")
    parser.add_argument("--step", type=int, default=None, help="the step to measure at (default steps // 2)")
    parser.add_argument("--k", type=int, default=4, help="channels per block (disruption, clustering, transport)")
    parser.add_argument("--blocks", type=int, nargs="+", default=None, help="blocks to cluster (default all)")
    parser.add_argument("--mask", choices=("cluster", "none"), default="cluster", help="transport: where to write")
    parser.add_argument("--random-draws", type=int, default=1, help="random-k control sets (disruption)")
    parser.add_argument("--calibration-prompts", type=int, default=8,
                        help="disruption: choose channels on the first N prompts of the file ...")
    parser.add_argument("--calibration-seed", type=int, default=1_000_000, help="... generated with this seed")
    parser.add_argument("--pipe-kwargs", type=json.loads, default={},
                        help='JSON object of further pipeline arguments, e.g. \'{"guidance_scale": 3.5}\'')
    parser.add_argument("--dtype", default=None, help="hub models: torch dtype name (default bfloat16)")
    parser.add_argument("--cpu-offload", action="store_true", help="hub models: enable_model_cpu_offload()")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if GPUs are present")
    parser.add_argument("--max-items", type=int, default=None,
                        help="compute at most this many items per process, then merge what is done (resume later)")
    args = parser.parse_args(argv)
    if not isinstance(args.pipe_kwargs, dict):
        parser.error(f"--pipe-kwargs must be a JSON object, got {args.pipe_kwargs!r}")
    reserved = sorted(set(args.pipe_kwargs) & set(RESERVED))
    if reserved:
        parser.error(f"--pipe-kwargs may not set {reserved}: the sweep sets the prompt, the noise and the output, "
                     "and the number of steps comes from --steps")
    if args.dtype is not None and not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        parser.error(f"--dtype must name a torch dtype such as bfloat16 or float16, got {args.dtype!r}")
    settings = helpers.sampling_settings(args.model, **args.pipe_kwargs)
    args.steps = settings.get("num_inference_steps", 20) if args.steps is None else args.steps
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    args.step = args.steps // 2 if args.step is None else args.step
    if not 0 <= args.step < args.steps:
        parser.error(f"--step {args.step} is outside the {args.steps} denoising steps")
    if args.k < 1 or args.random_draws < 0 or args.calibration_prompts < 1:
        parser.error("--k and --calibration-prompts must be at least 1, --random-draws at least 0")
    args.pipe_kwargs = {**settings, "num_inference_steps": args.steps}
    return args


def _settings(args) -> dict:
    return json.loads(json.dumps({name: getattr(args, name) for name in SETTINGS}))


def check_settings(parts: Path, out: Path, args) -> None:
    """Record the run's settings in ``parts/run.json`` on its first run; refuse to resume a run recorded with other
    settings, or to add to an ``out`` whose settings are unknown."""
    path = parts / "run.json"
    if not path.exists():
        if out.exists():
            raise SystemExit(f"{out} exists but {path} does not, so the settings of its rows are unknown: move {out} "
                             "away or choose another --out")
        path.write_text(json.dumps(_settings(args), indent=1))
        return
    old = json.loads(path.read_text())
    changed = {k: (old.get(k), v) for k, v in _settings(args).items() if old.get(k) != v}
    if changed:
        raise SystemExit(f"{path} records a run with other settings {changed} (recorded, now): rerun with the "
                         f"recorded settings to resume it, or choose another --out")


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
    with lock(parts, state.process_index):
        if state.is_main_process:
            check_settings(parts, out, args)
        state.wait_for_everyone()
        check_settings(parts, out, args)  # every process, so that all stop
        done = done_keys(parts, out)  # every process reads the same files, before anyone writes
        todo = [item for item in items if item not in done]
        state.wait_for_everyone()
        if state.is_main_process:
            print(f"{len(items)} items, {len(items) - len(todo)} already written, {len(todo)} to compute on "
                  f"{state.num_processes} process(es)", flush=True)
        measure = MEASURES[args.measure]
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
