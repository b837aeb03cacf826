"""Compare two trained book models side by side, to decide which one the book ships (issue: "decide by measurement").

    python tools/compare_models.py helpers/shapes/model /work/train_v2 --out compare.md [--chapters]

For each model: caption accuracy without guidance (the appendix's 512 held-out-seed captions), the top channel's
ratio to the median channel per block at t = 0.5 along the sampling trajectory, k = 4 as a share of the width, how
much the unnamed content (version 2) varies across seeds for one caption, and with ``--chapters`` the key numbers
chapters 2-5 glue (each chapter is executed on the model through FEW_CHANNELS_SHAPES_MODEL, into a scratch copy).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers
from helpers.shapes import HELD_OUT, evaluate_batch, load_shapes_pipeline, measure_quality, sample_scenes

CHAPTERS = ["02_disruption", "03_clustering", "04_prompt_transport", "05_subject_transport"]
GLUE = "application/papermill.record/text/plain"


def ratios_at_half(pipe, n: int = 32, seed: int = 0) -> list[float]:
    """Per block, the top channel's |mean over image tokens| over the median channel's, at t = 0.5 (step 10 of 20)."""
    prompts = [s.caption for s in sample_scenes(n, seed, exclude=HELD_OUT, world=pipe.world)]
    with helpers.record(pipe) as rec:
        helpers.generate(pipe, prompts, seed=seed, num_inference_steps=20)
    stat = helpers.channel_statistic(rec.mean, steps=[10])
    return helpers.top_to_median(stat, 1)[:, 0].tolist()


def unnamed_variety(pipe, caption: str = "a big red circle in the center on a blue background", n: int = 16):
    """How many distinct textures and patterns one caption gets over n seeds (version 2 content varies); a texture
    the evaluator cannot read (None) does not count."""
    found = evaluate_batch(helpers.generate(pipe, [caption] * n, seed=100, num_inference_steps=20))
    return len({f["texture"] for f in found} - {None}), len({f["pattern"] for f in found} - {None})


def glued(notebook: Path) -> dict[str, str]:
    """The text values a notebook glued (myst-nb glue outputs), by key."""
    out = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if meta and GLUE in o.get("data", {}):
                out[meta["name"]] = "".join(o["data"][GLUE]).strip("'\"")
    return out


def run_chapter(name: str, model: str, scratch: Path) -> tuple[dict[str, str], float]:
    """Execute a chapter on a model (a scratch copy, in a subprocess that sees FEW_CHANNELS_SHAPES_MODEL) and
    return its glued values and the run time."""
    target = scratch / f"{name}.ipynb"
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", target)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "run_notebooks.py"), str(target)], text=True,
                          env={**os.environ, "FEW_CHANNELS_SHAPES_MODEL": model}, cwd=ROOT, capture_output=True)
    if done.returncode:  # a chapter that fails on a model is a finding too: keep its last error line
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}, time.perf_counter() - start
    return glued(target), time.perf_counter() - start


def measure(model: str, chapters: bool) -> dict:
    torch.set_num_threads(2)
    pipe = load_shapes_pipeline(model)
    quality = measure_quality(pipe)
    width = helpers.hidden_width(pipe)
    row = {"model": model, "world": pipe.world, "width": width,
           "params": sum(p.numel() for p in pipe.transformer.parameters()),
           "all right (no guidance)": quality["seen"]["all"], "held-out combinations": quality["held_out"]["all"],
           "ratios at t = 0.5": ratios_at_half(pipe), "k = 4 / width": 4 / width}
    start = time.perf_counter()
    helpers.generate(pipe, ["a big red circle in the center on a blue background"] * 8, num_inference_steps=20)
    row["8 images x 20 steps (s)"] = time.perf_counter() - start
    row["textures, patterns over 16 seeds"] = unnamed_variety(pipe)
    if chapters:
        with tempfile.TemporaryDirectory() as scratch:
            for name in CHAPTERS:
                values, seconds = run_chapter(name, model, Path(scratch))
                row[name] = values
                row[f"{name} (s)"] = seconds
    return row


def table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
    lines = ["| | " + " | ".join(Path(r["model"]).name for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):
            return ", ".join(f"{x:.1f}" for x in v)
        return str(v)
    lines += [f"| {k} | " + " | ".join(cell(r.get(k)) for r in rows) + " |" for k in keys if k != "model"]
    for name in CHAPTERS:
        keys = sorted(set().union(*(r.get(name, {}).keys() for r in rows)))
        lines += [f"| {key} | " + " | ".join(r.get(name, {}).get(key, "") for r in rows) + " |"
                  for key in keys if not key.startswith(f"ch{int(name[:2])}-fig")]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="trained pipeline folders")
    parser.add_argument("--chapters", action="store_true", help="also run chapters 2-5 on each model")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    rows = [measure(str(Path(m).resolve()), args.chapters) for m in args.models]
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
