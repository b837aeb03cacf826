"""tools/sweep.py: a measurement over a prompt file, sharded across processes with accelerate, resumable.

The key check runs the sweep twice on the bundled model, once in one process and once as two processes started by
``accelerate launch`` (torchrun; on a CPU machine the processes join with gloo), and asks for byte-identical CSVs.
Then the misuse it must refuse: a second sweep on the same --out, --pipe-kwargs that set what the sweep sets, files
from another run (the message names the file), and integers of every kind alike.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import helpers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sweep  # noqa: E402  (tools/sweep.py: a command-line tool, not part of the helpers package)

EXAMPLES = ROOT / "prompts" / "example_prompts.txt"
FAST = ["--steps", "4"]  # few steps: the rows only have to be deterministic, not good images


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as each torchrun process gets: fast on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "five.txt"
    path.write_text("# five captions\n\n" + "\n".join(sweep.read_prompts(EXAMPLES)[:5]) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(prompt_file, tmp_path_factory) -> Path:
    """The table of a one-process run (in this process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("one") / "one.csv"
    sweep.main(["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), *FAST])
    torch.set_num_threads(threads)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------- the table

def test_example_prompt_file_is_readable():
    prompts = sweep.read_prompts(EXAMPLES)
    assert len(prompts) == 16 and all(p.startswith("a ") for p in prompts)


def test_one_process_writes_one_row_per_prompt_and_seed(reference, prompt_file):
    table = pd.read_csv(reference)
    assert list(table["prompt"]) == sweep.read_prompts(prompt_file)  # file order
    assert (table["seed"] == 0).all() and (table["step"] == 2).all()
    top = table.filter(like="top_channel@")
    ratio = table.filter(like="top_to_median@")
    assert top.shape[1] == ratio.shape[1] == 6  # the book model's 3 double + 3 single blocks
    assert list(top.columns)[:2] == ["top_channel@double 0", "top_channel@double 1"]  # the book's block labels
    assert ((top >= 0) & (top < helpers.hidden_width(helpers.load_pipeline("shapes")))).all().all()
    assert (ratio >= 1).all().all()
    assert (table["max_top_to_median"] == ratio.max(axis=1)).all()


def test_two_processes_write_the_same_table_as_one(reference, prompt_file, tmp_path):
    out = tmp_path / "two.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               str(ROOT / "tools" / "sweep.py"), "--measure", "statistics", "--prompts", str(prompt_file),
               "--out", str(out), *FAST]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    shards = sorted((tmp_path / "two.csv.parts").glob("shard-*.csv"))
    assert [p.name for p in shards] == ["shard-0.csv", "shard-1.csv"]  # both processes computed rows
    assert all(len(sweep.read_rows(p)[1]) >= 2 for p in shards)
    assert out.read_bytes() == reference.read_bytes()


def test_rerun_computes_nothing_and_keeps_the_table(reference, prompt_file, tmp_path, capsys):
    out = tmp_path / "one.csv"
    shutil.copy(reference, out)
    shutil.copytree(reference.with_name("one.csv.parts"), tmp_path / "one.csv.parts")
    sweep.main(["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), *FAST])
    assert "0 to compute" in capsys.readouterr().out
    assert out.read_bytes() == reference.read_bytes()


def test_interrupted_run_completes_without_duplicates(reference, prompt_file, tmp_path):
    out = tmp_path / "run.csv"
    args = ["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), *FAST]
    sweep.main([*args, "--max-items", "2"])  # stops early, as a preempted job would
    assert len(pd.read_csv(out)) == 2
    shard = tmp_path / "run.csv.parts" / "shard-0.csv"
    with open(shard, "a") as f:  # a process killed in the middle of a line
        f.write(f'"{sweep.read_prompts(prompt_file)[2]}",0,2,11')
    sweep.main(args)
    table = pd.read_csv(out)
    assert not table.duplicated(["prompt", "seed"]).any()
    assert out.read_bytes() == reference.read_bytes()
    assert shard.read_text().endswith("\n")


def test_new_seeds_add_rows_and_changed_settings_are_refused(reference, prompt_file, tmp_path):
    out = tmp_path / "one.csv"
    shutil.copy(reference, out)
    shutil.copytree(reference.with_name("one.csv.parts"), tmp_path / "one.csv.parts")
    with pytest.raises(SystemExit, match="other settings"):
        sweep.main(["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), "--steps", "5"])
    sweep.main(["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), *FAST,
                "--seeds", "0", "1"])
    table = pd.read_csv(out)
    assert len(table) == 10 and list(table["seed"][:2]) == [0, 1]  # prompt order, then seed order
    old = pd.read_csv(reference)
    pd.testing.assert_frame_equal(table[table["seed"] == 0].reset_index(drop=True), old)


# ----------------------------------------------------------------------------------------------- other measures

def _run(measure: str, lines: list[str], tmp_path, *extra) -> pd.DataFrame:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"{measure}.csv"
    sweep.main(["--measure", measure, "--prompts", str(prompts), "--out", str(out), "--steps", "3", *extra])
    return pd.read_csv(out)


def test_disruption_measure(tmp_path):
    table = _run("disruption", sweep.read_prompts(EXAMPLES)[:2], tmp_path, "--k", "2", "--calibration-prompts", "3")
    changes = table.filter(like="pixel_change@")
    assert list(changes.columns) == ["pixel_change@top-2", "pixel_change@bottom-2", "pixel_change@random-2#0"]
    assert (changes >= 0).all().all() and (changes > 0).any().any()
    assert table.filter(like="all_correct@").isin([0, 1]).all().all()


def test_clustering_measure(tmp_path):
    table = _run("clustering", sweep.read_prompts(EXAMPLES)[:2], tmp_path, "--blocks", "0", "5", "--k", "2")
    assert list(table.filter(like="iou@").columns) == ["iou@double 0", "iou@single 2"]
    area = table.filter(like="foreground_area@")
    assert ((area > 0) & (area < 1)).all().all()
    assert table.filter(like="iou@").apply(lambda c: c.between(0, 1)).all().all()


def test_transport_measure(tmp_path):
    lines = ["a big red circle on the left on a blue background | a big green circle on the left on a blue background"]
    table = _run("transport", lines, tmp_path, "--k", "2")
    assert table.loc[0, "attribute"] == "colour"
    assert table.loc[0, "adopted"] in (0, 1) and table.loc[0, "preserved"] in (0, 1)
    assert table.loc[0, "target_change"] >= 0


def test_transport_needs_pairs(tmp_path):
    with pytest.raises(ValueError, match="source prompt \\| target prompt"):
        _run("transport", ["a big red circle on the left on a blue background"], tmp_path)


# ----------------------------------------------------------------------------------------------- pieces

def test_read_prompts_skips_comments_blanks_and_repeats(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# comment\n a\n\nb\na\n")
    assert sweep.read_prompts(path) == ["a", "b"]
    path.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        sweep.read_prompts(path)
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        sweep.read_prompts(tmp_path / "missing.txt")


def test_statistics_take_the_conditional_rows_under_guidance(tmp_path):
    """With guidance a step holds [uncond, cond] rows; the statistic is the conditional row's, as without guidance
    the only row is (the same prompt and noise, so the two tables differ but both are complete)."""
    lines = sweep.read_prompts(EXAMPLES)[:1]
    guided = _run("statistics", lines, tmp_path, "--pipe-kwargs", '{"guidance_scale": 2.0}')
    assert json.loads((tmp_path / "statistics.csv.parts" / "run.json").read_text())["pipe_kwargs"] == {
        "num_inference_steps": 3, "guidance_scale": 2.0}
    assert guided.filter(like="top_to_median@").notna().all().all()


def test_shard_rows_survive_a_partial_line(tmp_path):
    path = tmp_path / "shard-0.csv"
    sweep.append_row(path, {"prompt": "a, b", "seed": 0, "x": 0.123456789, "ok": True})
    with open(path, "a") as f:
        f.write('"c",1,0.5')  # no newline: the write of a killed process
    assert sweep.read_rows(path) == (["prompt", "seed", "x", "ok"], [{"prompt": "a, b", "seed": "0", "x": "0.123457",
                                                                       "ok": "1"}])
    sweep.append_row(path, {"prompt": "c", "seed": 1, "x": float("nan"), "ok": False})
    assert [r["prompt"] for r in sweep.read_rows(path)[1]] == ["a, b", "c"]
    with pytest.raises(ValueError, match="has the columns"):
        sweep.append_row(path, {"prompt": "d", "seed": 0, "y": 1})


# ----------------------------------------------------------------------------------------------- misuse

def _args(prompt_file, out, *extra) -> list[str]:
    return ["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(out), *FAST, *extra]


def test_run_json_records_the_pipeline_arguments_that_ran(reference):
    run = json.loads(reference.with_name("one.csv.parts").joinpath("run.json").read_text())
    assert run["pipe_kwargs"] == {"num_inference_steps": 4}  # the model's settings with --steps on top
    assert (run["steps"], run["step"]) == (4, 2)


def test_a_second_sweep_on_the_same_out_stops_before_writing(prompt_file, tmp_path):
    out = tmp_path / "busy.csv"
    parts = tmp_path / "busy.csv.parts"
    with sweep.lock(parts, 0):  # a sweep is running on this --out
        with pytest.raises(SystemExit, match=r"another sweep \(process \d+\) is writing .*busy.csv.parts"):
            sweep.main(_args(prompt_file, out))
    assert not list(parts.glob("shard-*")) and not (parts / "run.json").exists() and not out.exists()
    with sweep.lock(parts, 0):  # released: the next run takes it
        pass


@pytest.mark.parametrize("pipe_kwargs, message", [
    ('{"num_inference_steps": 8}', r"may not set \['num_inference_steps'\].*--steps"),
    ('{"generator": 1, "prompt": "a"}', r"may not set \['generator', 'prompt'\]"),
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "invalid loads value"),
])
def test_pipe_kwargs_that_set_what_the_sweep_sets_are_refused(prompt_file, tmp_path, capsys, pipe_kwargs, message):
    with pytest.raises(SystemExit):
        sweep.parse_args(_args(prompt_file, tmp_path / "x.csv", "--pipe-kwargs", pipe_kwargs))
    assert re.search(message, capsys.readouterr().err)


def test_steps_come_from_the_model_settings_unless_given(prompt_file, tmp_path):
    base = ["--measure", "statistics", "--prompts", str(prompt_file), "--out", str(tmp_path / "x.csv")]
    assert sweep.parse_args(base).pipe_kwargs == helpers.sampling_settings("shapes")
    args = sweep.parse_args([*base, "--model", "flux.1-schnell", "--pipe-kwargs", '{"height": 256}'])
    assert args.pipe_kwargs == helpers.sampling_settings("flux.1-schnell", height=256) and args.step == 2
    with pytest.raises(SystemExit):
        sweep.parse_args([*base, "--steps", "4", "--step", "4"])


def test_recovery_messages_name_the_file_to_act_on(tmp_path):
    parts, out = tmp_path / "r.csv.parts", tmp_path / "r.csv"
    parts.mkdir()
    shard = parts / "shard-0.csv"
    sweep.append_row(shard, {"prompt": "a", "seed": 0, "x": 1.0})
    with pytest.raises(ValueError, match=f"{shard} has the columns .* delete {shard}"):
        sweep.append_row(shard, {"prompt": "b", "seed": 0, "y": 1.0})
    out.write_text("prompt,seed,y\nb,0,2\n")
    with pytest.raises(ValueError, match=f"{shard} has the columns .* but {out} has"):
        sweep.merge(parts, out, [("a", 0), ("b", 0)])
    with open(shard, "a") as f:  # what two sweeps racing on one shard used to leave: a second header
        f.write("prompt,seed,x\nc,1,3.0\n")
    with pytest.raises(ValueError, match=f"{shard}, line 3, is not a row"):
        sweep.read_rows(shard)
    args = sweep.parse_args(["--measure", "statistics", "--prompts", str(EXAMPLES), "--out", str(out)])
    with pytest.raises(SystemExit, match=f"{out} exists but {parts / 'run.json'} does not"):
        sweep.check_settings(parts, out, args)
    out.unlink()
    sweep.check_settings(parts, out, args)  # records the settings ...
    args.k = 8
    with pytest.raises(SystemExit, match=f"{parts / 'run.json'} records a run with other settings .*'k': \\(4, 8\\)"):
        sweep.check_settings(parts, out, args)  # ... and refuses others


def test_integers_of_every_kind_are_treated_alike():
    for three in (3, np.int64(3), np.array(3), torch.tensor(3), torch.tensor([3])):
        assert sweep._format(three) == "3" and sweep.as_int(three) == 3
    for half in (0.5, np.float32(0.5), torch.tensor(0.5)):
        assert sweep._format(half) == "0.5"
    for yes in (True, np.bool_(True), torch.tensor(True)):
        assert sweep._format(yes) == "1"
    assert sweep._format(float("nan")) == sweep._format(torch.tensor(float("nan"))) == ""
    assert sweep.work_items(["a"], [np.int64(1), torch.tensor(2), 3]) == [("a", 1), ("a", 2), ("a", 3)]
    for bad in (1.5, True, np.bool_(False), torch.tensor(1.0), torch.tensor([1, 2]), "1"):
        with pytest.raises(TypeError, match="must be an integer"):
            sweep.as_int(bad)
    with pytest.raises(TypeError, match="one number, got an array of shape \\(2,\\)"):
        sweep._format(torch.tensor([1, 2]))
