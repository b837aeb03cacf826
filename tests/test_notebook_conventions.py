"""The conventions of CONTRIBUTING.md that every chapter notebook follows, checked without running anything.

Shape: the title and Colab badge, the Colab-only setup cell, the "In this chapter" box (learning goals, time, which k),
a "What we found" section with glued numbers, exercises with gated sphinx-exercise solutions (tags `solution` and
`check`). Reading: code and printed lines of at most 88 characters, figures glued and shown with a number and a
caption, tables as HTML. Storage: outputs stored in order, key results checked by nbval, size, no widget state.
And that every entry of _toc.yml exists and every notebook is in it.

A failure names the notebook, the cell (its index in the notebook, counting from 0, and its first words) and what
to change. Only the numbered chapters (1-6) state "Massive channels here"; notebooks of the toc's "Appendix" part
need no exercises.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"].get("branch", "main")
OWNER_REPO = REPO_URL.removeprefix("https://github.com/")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 2 * 1024 * 1024
COLUMNS = 88  # ruff's line length for the chapters (notebooks/ruff.toml); what a 1280 px page shows
GLUE = "application/papermill.record/"
HIDDEN_OUTPUT = {"remove-output", "remove-cell"}  # outputs the book does not show

sys.path.insert(0, str(ROOT / "tools"))
from toc import chapter_numbers, toc_files, toc_parts

APPENDIX = {f for part in toc_parts() if part["caption"].lower().startswith("appendix") for f in part["files"]}
NUMBERED = chapter_numbers()


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def where(i, cell) -> str:
    first = next((line.strip() for line in source(cell).splitlines() if line.strip()), "")
    return f"cell {i} ({first[:50]!r})"


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def prefix(path: Path) -> str:
    """The chapter's prefix for glue keys and labels: 02_disruption -> 'ch2-', A1_training -> 'a1-'."""
    head = path.stem.split("_")[0]
    return f"ch{int(head)}-" if head.isdigit() else f"{head.lower()}-"


def glue_outputs(cell):
    """(key, mime types) of every glued value the cell stores."""
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        mimes = [m.removeprefix(GLUE) for m in data if m.startswith(GLUE)]
        if mimes:
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            yield name, mimes


def directives(markdown: str, name: str):
    """(argument, options, body) of every ```{name} ...``` (or :::{name}) block in the markdown."""
    pattern = re.compile(r"^(`{3,}|:{3,})\{" + re.escape(name) + r"\}[ \t]*([^\n]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
    for match in pattern.finditer(markdown):
        argument, body = match.group(2).strip(), match.group(3)
        lines = body.split("\n")
        options = {}
        while lines and lines[0].startswith(":"):
            key, _, value = lines.pop(0)[1:].partition(":")
            options[key.strip()] = value.strip()
        yield argument, options, "\n".join(lines).strip()


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    path = request.param
    return path, json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the table of contents


def test_toc_entries_exist():
    missing = [f for f in toc_files()
               if not any((ROOT / (f + ext)).exists() for ext in ("", ".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_notebook_is_in_toc():
    listed = {f.removesuffix(".ipynb") for f in toc_files()}
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml (add one `- file:` line each): {unlisted}"


def test_chapters_numbered_as_their_files():
    """The book numbers chapters 1-6 itself, so "chapter 3" in the prose is notebooks/03_*."""
    wrong = {f: n for f, n in NUMBERED.items() if not Path(f).name.startswith(f"{n:02d}_")}
    assert NUMBERED and not wrong, f"the book's chapter numbers do not match the file names: {wrong}"


# ---------------------------------------------------------------- the shape of a chapter


def test_title_and_colab_badge(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    lines = source(first).splitlines()
    assert first["cell_type"] == "markdown" and lines and lines[0].startswith("# "), \
        "the first cell must be markdown starting with a '# Title'"
    number = re.match(r"# (\d+)\. \S", lines[0])
    book_number = NUMBERED.get(f"notebooks/{path.stem}")
    if book_number is not None:  # a numbered chapter: the title carries the number the book gives it
        assert number and int(number.group(1)) == book_number, \
            f"{lines[0]!r}: the book numbers this chapter {book_number} (_toc.yml); title it '# {book_number}. Title'"
    else:
        head = path.stem.split("_")[0]
        assert not number or (head.isdigit() and int(number.group(1)) == int(head)), \
            f"{lines[0]!r}: this notebook is not numbered {number.group(1) if number else ''} in the book"
    target = f"https://colab.research.google.com/github/{OWNER_REPO}/blob/{BRANCH}/notebooks/{path.name}"
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({target})"
    assert len(lines) > 1 and lines[1].strip() == badge, \
        f"the line after the title must be the Colab badge, exactly: {badge}"


def test_colab_only_setup_cell(notebook):
    _, nb = notebook
    setup_cell = nb["cells"][1] if len(nb["cells"]) > 1 else None
    assert setup_cell is not None and setup_cell["cell_type"] == "code", \
        "the cell after the title must be the setup cell (code)"
    setup = source(setup_cell)
    guard = re.search(r"""^if ["']google\.colab["'] in sys\.modules:\s*\n((?:[ \t]+.*\n?)+)""", setup, re.MULTILINE)
    assert guard, "the setup cell must install on Colab only: `if \"google.colab\" in sys.modules:`"
    assert re.search(rf"""pip install .*["']?git\+{re.escape(REPO_URL)}(\.git)?(@[\w./-]+)?["']?""", guard.group(1)), \
        f"the setup cell must install git+{REPO_URL} inside the google.colab guard"


def test_in_this_chapter(notebook):
    path, nb = notebook
    cell = nb["cells"][2] if len(nb["cells"]) > 2 else None
    boxes = list(directives(source(cell), "admonition")) if cell and cell["cell_type"] == "markdown" else []
    box = next((b for b in boxes if b[0] == "In this chapter"), None)
    assert box, "the cell after the setup cell must be the ```{admonition} In this chapter box (CONTRIBUTING.md)"
    _, options, body = box
    problems = []
    if "tip" not in options.get("class", "").split():
        problems.append("give it `:class: tip`")
    goals = [line for line in body.splitlines() if re.match(r"\s*[-*] \S", line)]
    if not 3 <= len(goals) <= 4:
        problems.append(f"list three or four learning goals as '- ' items (found {len(goals)})")
    if not re.search(r"\*\*Time:\*\*[^\n]*\d+\s*minute", body):
        problems.append("add '**Time:** runs in about N minutes on a laptop CPU; about M minutes to read.'")
    if f"notebooks/{path.stem}" in NUMBERED and not re.search(r"\*\*Massive channels here:\*\*[^\n]*\S", body):
        problems.append("add '**Massive channels here:** the top-k per block by s_d, with k = ... (why this k)'")
    assert not problems, "In this chapter: " + "; ".join(problems)


def sections(nb):
    """[(cell index, heading text)] of the '## ' headings, in order."""
    return [(i, m.group(1).strip()) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
            for m in re.finditer(r"^## +(.+)$", source(c), re.MULTILINE)]


def test_what_we_found(notebook):
    _, nb = notebook
    heads = sections(nb)
    found = [k for k, (_, title) in enumerate(heads) if title == "What we found"]
    assert len(found) == 1, f"one '## What we found' section (found {len(found)}): the chapter's findings, glued"
    k = found[0]
    start = heads[k][0]
    end = heads[k + 1][0] if k + 1 < len(heads) else len(nb["cells"])
    cells = nb["cells"][start:end + 1] if end > start else nb["cells"][start:start + 1]
    body = "\n".join(source(c) for c in cells if c["cell_type"] == "markdown")
    body = body.split("## What we found", 1)[1]
    if k + 1 < len(heads):
        body = body.split(f"## {heads[k + 1][1]}", 1)[0]
    assert re.search(r"\{glue(:text|:any|:md)?\}`", body), \
        "'What we found' must state its numbers with {glue:text}`chN-...` (never typed into the markdown)"
    later = [title for _, title in heads[k + 1:] if not title.lower().startswith("exercise")]
    assert not later, f"'What we found' comes last, only '## Exercises' after it (found after it: {later})"


def exercise_problems(path: Path, nb) -> list[str]:
    """Every way the notebook departs from the exercise/solution structure of CONTRIBUTING.md."""
    cells, problems = nb["cells"], []
    chapter = f"notebooks/{path.stem}"
    exercises = {}  # label -> cell index
    solved = {}  # label -> number of solutions
    block = None  # the open solution: {"label", "start", "cells"}
    last_exercise = None
    for i, cell in enumerate(cells):
        src, t = source(cell), tags(cell)
        if cell["cell_type"] == "markdown":
            for _, options, _ in directives(src, "exercise"):
                label = options.get("label")
                if not label:
                    problems.append(f"{where(i, cell)}: an exercise needs `:label: {prefix(path)}exN`")
                    continue
                if not label.startswith(prefix(path)):
                    problems.append(f"{where(i, cell)}: exercise label {label!r} must start with {prefix(path)!r}")
                if label in exercises:
                    problems.append(f"{where(i, cell)}: exercise label {label!r} is used twice")
                if last_exercise and not solved.get(last_exercise):
                    problems.append(f"exercise {last_exercise!r} has no solution before the next exercise")
                exercises[label], last_exercise = i, label
            if list(directives(src, "solution")):
                problems.append(f"{where(i, cell)}: use the gated form {{solution-start}} ... {{solution-end}} "
                                "(a {solution} block cannot hide code cells)")
        starts = list(directives(src, "solution-start")) if cell["cell_type"] == "markdown" else []
        is_end = cell["cell_type"] == "markdown" and re.search(r"^(`{3,}|:{3,})\{solution-end\}", src, re.MULTILINE)
        if starts:
            label, options, _ = starts[0]
            if block:
                problems.append(f"{where(i, cell)}: a solution starts before the one for {block['label']!r} ended")
            if "solution" not in t:
                problems.append(f"{where(i, cell)}: tag the {{solution-start}} cell `solution`")
            if "dropdown" not in options.get("class", "").split():
                problems.append(f"{where(i, cell)}: the solution needs `:class: dropdown` (hidden until opened)")
            if label not in exercises:
                problems.append(f"{where(i, cell)}: {{solution-start}} {label!r} comes before (or without) its "
                                "exercise")
            elif label != last_exercise:
                problems.append(f"{where(i, cell)}: the solution to {label!r} must follow its exercise, before "
                                "the next one")
            solved[label] = solved.get(label, 0) + 1
            block = {"label": label, "start": i, "cells": []}
            continue
        if is_end:
            if not block:
                problems.append(f"{where(i, cell)}: {{solution-end}} without a {{solution-start}}")
            else:
                if "solution" not in t:
                    problems.append(f"{where(i, cell)}: tag the {{solution-end}} cell `solution`")
                inside = block["cells"]
                name = f"the solution to {block['label']!r} (cell {block['start']})"
                if not any(c["cell_type"] == "code" and "solution" in tags(c) for _, c in inside):
                    problems.append(f"{name} has no code cell tagged `solution`")
                if not any(c["cell_type"] == "code" and "check" in tags(c) for _, c in inside):
                    problems.append(f"{name} has no `check` cell (asserts on the solution's results)")
                answers = [c for _, c in inside if c["cell_type"] == "markdown"
                           and re.match(r"\s*(\*Answer\.\*|\*\*Answer\.\*\*)", source(c))]
                if not answers:
                    problems.append(f"{name} has no written answer: a markdown cell starting '*Answer.*'")
                elif not any(re.search(r"\{glue(:text|:any|:md)?\}`", source(c)) for c in answers):
                    problems.append(f"{name}: the *Answer.* states the result with glued numbers ({{glue:text}})")
            block = None
            continue
        if block:
            block["cells"].append((i, cell))
            kind = t & {"solution", "check"}
            if len(kind) != 1:
                problems.append(f"{where(i, cell)}: inside the solution to {block['label']!r}, tag every cell "
                                f"either `solution` or `check` (tags: {sorted(t) or 'none'})")
            elif "check" in kind:
                if cell["cell_type"] != "code":
                    problems.append(f"{where(i, cell)}: only code cells can be `check` cells")
                elif not re.search(r"^\s*assert\b", source(cell), re.MULTILINE):
                    problems.append(f"{where(i, cell)}: a `check` cell asserts on the solution's results")
        elif t & {"solution", "check"}:
            problems.append(f"{where(i, cell)}: tagged {sorted(t & {'solution', 'check'})} outside a "
                            "{solution-start} ... {solution-end} block")
    if block:
        problems.append(f"the solution to {block['label']!r} (cell {block['start']}) has no {{solution-end}}")
    problems += [f"exercise {label!r} (cell {i}) has no solution" for label, i in exercises.items()
                 if not solved.get(label)]
    problems += [f"exercise {label!r} has {n} solutions" for label, n in solved.items() if n > 1]
    if chapter not in APPENDIX and not exercises:
        problems.append("the chapter has no exercises (```{exercise} with :label:, see CONTRIBUTING.md)")
    return problems


def test_exercises_and_solutions(notebook):
    path, nb = notebook
    problems = exercise_problems(path, nb)
    assert not problems, f"{len(problems)} problems:\n  " + "\n  ".join(problems)


def test_exercise_labels_unique_in_book():
    labels = {}
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                for _, options, _ in directives(source(cell), "exercise"):
                    if options.get("label"):
                        labels.setdefault(options["label"], []).append(path.name)
    twice = {k: v for k, v in labels.items() if len(v) > 1}
    assert not twice, f"exercise labels used more than once: {twice}"


# ---------------------------------------------------------------- what the reader sees


def test_code_lines_fit(notebook):
    """ruff format wraps code at 88 columns but not comments or long strings: those are the reader's problem too."""
    _, nb = notebook
    wide = [f"{where(i, c)} line {n}: {len(line)} characters"
            for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for n, line in enumerate(source(c).splitlines(), 1) if len(line) > COLUMNS]
    assert not wide, f"{len(wide)} code lines wider than {COLUMNS} characters (they scroll sideways at 1280 px):" \
                     "\n  " + "\n  ".join(wide)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def shown_text(out) -> str | None:
    """What the book prints of one output as text: stdout, or a result with nothing richer than text/plain."""
    if out.get("output_type") == "stream":
        return text(out.get("text", "")) if out.get("name") == "stdout" else None
    data = out.get("data", {})
    if out.get("output_type") in ("execute_result", "display_data") and "text/plain" in data and \
            not any(m.startswith(("image/", "text/html", "text/markdown", "text/latex")) for m in data):
        return text(data["text/plain"])
    return None


def test_code_cells_short(notebook):
    """A code cell is one step a reader takes in at a glance: at most 30 lines (CONTRIBUTING: about 25)."""
    _, nb = notebook
    long = [f"{where(i, c)}: {len(source(c).splitlines())} lines" for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and len(source(c).splitlines()) > 30]
    assert not long, "code cells over 30 lines: split them at a step\n  " + "\n  ".join(long)

def test_printed_lines_fit(notebook):
    _, nb = notebook
    wide = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or tags(cell) & HIDDEN_OUTPUT:
            continue
        for out in cell.get("outputs", []):
            shown = shown_text(out)
            for line in ANSI.sub("", shown or "").splitlines():
                if len(line.rstrip()) > COLUMNS:
                    wide.append(f"{where(i, cell)}: {len(line.rstrip())} characters: {line.strip()[:60]!r}")
    assert not wide, f"{len(wide)} printed lines wider than {COLUMNS} characters (findings go into markdown with " \
                     "glue, tables into DataFrames):\n  " + "\n  ".join(wide)


def test_tables_as_html(notebook):
    _, nb = notebook
    bad = [where(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
           and re.search(r"\.to_string\(|\.to_markdown\(|tabulate\(", source(c))]
    assert not bad, f"show tables as DataFrames (HTML, the last expression of a cell), not printed text: {bad}"


def test_figures_numbered_and_captioned(notebook):
    _, nb = notebook
    markdown = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    shown = {}
    problems = []
    for argument, options, body in directives(markdown, "glue:figure"):
        shown[argument] = options
        if not options.get("name"):
            problems.append(f"{{glue:figure}} {argument}: add `:name: {argument}` (the figure's number and link)")
        if not body:
            problems.append(f"{{glue:figure}} {argument}: add a caption (what the figure shows, one or two "
                            "sentences)")
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for key, mimes in glue_outputs(cell):
            if any(m.startswith("image/") for m in mimes) and key not in shown:
                problems.append(f"{where(i, cell)}: figure {key!r} is glued but never shown: "
                                f"```{{glue:figure}} {key}``` with :name: and a caption")
        if tags(cell) & HIDDEN_OUTPUT:
            continue
        for out in cell.get("outputs", []):
            if any(m.startswith("image/") for m in out.get("data", {})):
                problems.append(f"{where(i, cell)}: shows a figure without a number or caption: glue it "
                                "(helpers.figures.glue) and show it with {glue:figure}; tag this cell `remove-output`")
                break
    assert not problems, f"{len(problems)} figure problems:\n  " + "\n  ".join(problems)


def test_glue_keys(notebook):
    path, nb = notebook
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for key, mimes in glue_outputs(cell):
            if not key or not key.startswith(prefix(path)):
                problems.append(f"{where(i, cell)}: glue key {key!r} must start with {prefix(path)!r}")
            if not any(m.startswith(("image/", "text/html")) for m in mimes) and \
                    "nbval-check-output" not in tags(cell):
                problems.append(f"{where(i, cell)}: glues {key!r}, a key number: tag the cell `nbval-check-output` "
                                "so nbval recomputes and compares it")
    assert not problems, "\n  ".join(problems)


def test_glue_keys_unique_in_book():
    keys = {}
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            for key, _ in glue_outputs(cell) if cell["cell_type"] == "code" else ():
                keys.setdefault(key, set()).add(path.name)
    twice = {k: sorted(v) for k, v in keys.items() if len(v) > 1}
    assert not twice, f"glue keys used by more than one notebook: {twice}"


# ---------------------------------------------------------------- what is stored


def test_outputs_stored(notebook):
    _, nb = notebook
    run = [c for c in nb["cells"]
           if c["cell_type"] == "code" and source(c).strip() and "skip-execution" not in tags(c)]
    counts = [c.get("execution_count") for c in run]
    assert None not in counts, "some code cells were never executed: store the notebook with its outputs"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), \
        "execution counts are out of order: restart the kernel and run all cells before saving"
    assert any(c.get("outputs") for c in run), "no stored outputs"


def test_no_widget_state(notebook):
    _, nb = notebook
    assert "widgets" not in nb.get("metadata", {}), \
        "clear the widget state metadata before saving (Jupyter: Settings > Save Widget State Automatically off)"
    blobs = [where(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             for out in c.get("outputs", []) if "application/vnd.jupyter.widget-state+json" in out.get("data", {})]
    assert not blobs, f"widget state stored in outputs: {blobs}"


def test_size(notebook):
    path, _ = notebook
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 2**20:.1f} MB (limit 2 MB)"


def test_has_checked_output(notebook):
    _, nb = notebook
    checked = [c for c in nb["cells"] if c["cell_type"] == "code" and "nbval-check-output" in tags(c)]
    assert checked, "tag at least one key-result cell `nbval-check-output`"
    assert all(c.get("outputs") for c in checked), "every `nbval-check-output` cell needs a stored output"


def test_gpu_cells_skipped_on_cpu(notebook):
    _, nb = notebook
    bad = [i for i, c in enumerate(nb["cells"])
           if "gpu" in tags(c) and not {"nbval-skip", "skip-execution"} <= tags(c)]
    assert not bad, f"cells {bad} are tagged `gpu` but not also `nbval-skip` and `skip-execution`"


# ---------------------------------------------------------------- nbval compares glued text, not glued figures


NBVAL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "execution_count": 1, "id": "glue", "metadata": {"tags": ["nbval-check-output"]},
         "source": "import matplotlib.pyplot as plt\nimport numpy as np\nfrom helpers.figures import glue\n"
                   "glue('t-value', f'{0.5 + 0.078:.3f}')\nfig, ax = plt.subplots()\nax.plot(np.random.rand(5))\n"
                   "glue('t-fig', fig)\nplt.close(fig)",
         "outputs": [
             {"output_type": "display_data", "data": {GLUE + "text/plain": "'VALUE'"},
              "metadata": {"scrapbook": {"name": "t-value", "mime_prefix": GLUE}}},
             {"output_type": "display_data",  # a glued figure is shown (and closed): helpers.figures.glue
              "data": {"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==",
                       "text/plain": "<Figure size 640x480 with 1 Axes>"},
              "metadata": {"scrapbook": {"name": "t-fig", "mime_prefix": ""}}}]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_nbval_compares_glued_text_not_figures(tmp_path):
    """conftest.py: in a cell tagged nbval-check-output, a glued value is compared, a glued figure's image is not."""
    for name, value in (("right.ipynb", "'0.578'"), ("wrong.ipynb", "'0.579'")):
        # the stored figure is a 1x1 PNG of random data: any redraw differs, and must not count
        (tmp_path / name).write_text(json.dumps(NBVAL_NOTEBOOK).replace("'VALUE'", value))
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                             "--nbval-current-env", "right.ipynb", "wrong.ipynb"],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = result.stdout + result.stderr
    assert "1 failed, 1 passed" in report, report[-3000:]
    assert "FAILED wrong.ipynb" in report and "application/papermill.record/text/plain" in report, report[-3000:]


def test_figures_fit_the_page(notebook):
    """A figure wider than helpers.figures.MAX_WIDTH is shrunk by the page (fonts under 8 pt, 32x32 images under 96
    px); image outputs store the width they are shown at (retina PNGs hold twice as many pixels)."""
    from helpers.figures import DPI, MAX_WIDTH
    _, nb = notebook
    problems = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            width = out.get("metadata", {}).get("image/png", {}).get("width")
            if width and width > MAX_WIDTH * DPI + 1:
                problems.append(f"{where(i, cell)}: a figure {width} px wide; make it at most {MAX_WIDTH} inches "
                                "(fewer columns, a narrower figsize)")
    assert not problems, "\n  ".join(problems)


def test_figures_referred_to(notebook):
    """Every numbered figure is referred to by its number in the text ({numref}`name`)."""
    _, nb = notebook
    markdown = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    names = [o["name"] for _, o, _ in directives(markdown, "glue:figure") if o.get("name")]
    missing = [n for n in names if not re.search(r"\{numref\}`([^`<]*<)?" + re.escape(n) + r">?`", markdown)]
    assert not missing, f"figures never referred to in the text: add {{numref}}`NAME` for {missing}"
