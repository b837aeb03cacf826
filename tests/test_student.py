"""The student edition (tools/student.py, `make student`): solutions out, an answer cell in their place, checks
kept, outputs cleared; and `--grade` runs a filled-in notebook and reports its checks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from toc import chapter_paths

import student

CHAPTERS = [ROOT / p for p in chapter_paths() if p.endswith(".ipynb")]


def md(text, *tags):
    return {"cell_type": "markdown", "metadata": {"tags": list(tags)} if tags else {}, "source": text}


def code(text, *tags, outputs=None):
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": text,
            "execution_count": 1 if outputs else None, "outputs": outputs or []}


def notebook(*cells):
    return {"cells": list(cells), "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


PRINTED = [{"output_type": "stream", "name": "stdout", "text": "SOLUTION OUTPUT\n"}]


def exercise_notebook(answer="twice = 2 * value"):
    """A chapter in miniature: one exercise with a gated solution (CONTRIBUTING.md), one text-only solution."""
    return notebook(
        md("# 1. A chapter\n[badge]"),
        code("value = 21", outputs=[{"output_type": "stream", "name": "stdout", "text": "21\n"}]),
        md("```{exercise}\n:label: ch1-ex1\n\nDouble the value.\n```"),
        md("```{solution-start} ch1-ex1\n:class: dropdown\n```", "solution"),
        code(answer + '\nprint("SOLUTION OUTPUT")', "solution", outputs=PRINTED),
        code("assert twice == 42", "check"),
        md("*Answer.* Twice the value is {glue:text}`ch1-twice`.", "solution"),
        md("```{solution-end}\n```", "solution"),
        md("```{exercise}\n:label: ch1-ex2\n\nWhy?\n```"),
        md("```{solution-start} ch1-ex2\n:class: dropdown\n```", "solution"),
        md("*Answer.* Because.", "solution"),
        md("```{solution-end}\n```", "solution"),
    )


def test_solutions_removed_checks_kept():
    out = student.student_notebook(exercise_notebook())
    sources = [student.source(c) for c in out["cells"]]
    assert not any("solution" in student.tags(c) for c in out["cells"])
    assert not any("solution-start" in s or "solution-end" in s or "SOLUTION" in s or "Answer." in s
                   for s in sources)
    assert sources.count(student.PLACEHOLDER_CODE) == 1 and sources.count(student.PLACEHOLDER_MARKDOWN) == 1
    # the answer cell sits where the solution's code was, right before its check
    i = sources.index(student.PLACEHOLDER_CODE)
    assert sources[i + 1] == "assert twice == 42" and "check" in student.tags(out["cells"][i + 1])
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in out["cells"] if c["cell_type"] == "code")
    assert "Student edition" in sources[1]
    assert all(c.get("id") for c in out["cells"] if c["source"] in (student.PLACEHOLDER_CODE, student.NOTE)), \
        "new cells carry ids (nbformat 4.5)"


def test_older_solution_runs_without_markers():
    """Cells tagged `solution` without {solution-start}: each run becomes one answer cell."""
    nb = notebook(md("# Title"), code("a = 1", "solution"), code("assert a == 1", "check"),
                  md("*Answer.* one", "solution"), code("b = 2"), code("c = 3", "solution"))
    sources = [student.source(c) for c in student.student_notebook(nb)["cells"]]
    assert sources[2:] == [student.PLACEHOLDER_CODE, "assert a == 1", "b = 2", student.PLACEHOLDER_CODE]


def test_notebook_without_exercises_only_loses_outputs():
    nb = notebook(md("# Title"), code("x = 1", outputs=PRINTED), md("text"))
    out = student.student_notebook(nb)
    assert [student.source(c) for c in out["cells"]] == ["# Title", "x = 1", "text"]
    assert out["cells"][1]["outputs"] == [] and nb["cells"][1]["outputs"] == PRINTED  # the original is untouched


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_student_edition_of_every_chapter(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    out = student.student_notebook(nb)
    solution_sources = {student.source(c).strip() for c in nb["cells"] if "solution" in student.tags(c)} - {""}
    checks = [student.source(c) for c in nb["cells"] if "check" in student.tags(c)]
    kept = [student.source(c) for c in out["cells"] if "check" in student.tags(c)]
    assert not [c for c in out["cells"] if "solution" in student.tags(c)], "a solution cell is left"
    assert not solution_sources & {student.source(c).strip() for c in out["cells"]}, "a solution's text is left"
    assert not [c for c in out["cells"] if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])], \
        "outputs (a solution's among them) are left"
    assert kept == checks, "the check cells must all stay, in order"
    blocks = [b for b in student.solution_blocks(nb["cells"]) if any("solution" in student.tags(nb["cells"][i])
                                                                      for i in b)]
    answers = [c for c in out["cells"] if student.source(c) in (student.PLACEHOLDER_CODE,
                                                                 student.PLACEHOLDER_MARKDOWN)]
    assert len(answers) == len(blocks), "one answer cell per solution"


def test_make_student_writes_ignored_folder(tmp_path):
    nb_path = tmp_path / "01_chapter.ipynb"
    nb_path.write_text(json.dumps(exercise_notebook()))
    assert student.main(["--out", str(tmp_path / "student"), str(nb_path)]) == 0
    written = json.loads((tmp_path / "student" / "01_chapter.ipynb").read_text())
    assert student.source(written["cells"][1]).startswith("> **Student edition.**")
    assert (tmp_path / "student" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_grade_reports_checks(tmp_path, capsys):
    """A right answer passes, a wrong one fails with the exercise named; a notebook without checks passes."""
    edition = student.student_notebook(exercise_notebook())
    for name, answer in (("right.ipynb", "twice = 2 * value"), ("wrong.ipynb", "twice = 2 + value")):
        cells = [dict(c, source=answer) if c["source"] == student.PLACEHOLDER_CODE else c for c in edition["cells"]]
        (tmp_path / name).write_text(json.dumps(dict(edition, cells=cells)))
    (tmp_path / "none.ipynb").write_text(json.dumps(notebook(md("# Title"), code("x = 1"))))
    assert student.main(["--grade", str(tmp_path / "right.ipynb"), str(tmp_path / "none.ipynb")]) == 0
    report = capsys.readouterr().out
    assert "1 of 1 checks passed" in report and "PASS  ch1-ex1" in report and "no exercise checks" in report
    assert student.main(["--grade", str(tmp_path / "wrong.ipynb"), "--timeout", "120"]) == 1
    report = capsys.readouterr().out
    assert "0 of 1 checks passed" in report and "FAIL  ch1-ex1" in report and "assert twice == 42" in report
