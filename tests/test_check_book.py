"""tools/check_book.py on a small book built here: a chapter that follows CONTRIBUTING.md passes, and each way a
page can fail is reported with its page, element and numbers.

Builds a two-notebook book with the repository's own configuration (outputs stored by hand, nothing executed) and
opens it in the system Chromium, as `make check-book` does: about half a minute.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_book

BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/few-channels/few-channels-book/blob/main/notebooks/{}.ipynb)")
GLUE = "application/papermill.record/"


def png(width_in, height_in, dpi):
    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=dpi)
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def md(text, *tags):
    return {"cell_type": "markdown", "metadata": {"tags": list(tags)}, "source": text}


def code(text, *outputs, tags=()):
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": text, "execution_count": 1,
            "outputs": list(outputs)}


def stdout(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def notebook(*cells):
    return {"cells": list(cells), "nbformat": 4, "nbformat_minor": 4,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


def passing_chapter():
    sharp = png(2, 1, 200)  # 400x200 px shown at 200x100: "retina", as helpers.figures.setup() makes them
    return notebook(
        md("# 1. A chapter that passes\n" + BADGE.format("01_pass")),
        code("x = 1  # a line of exactly 88 characters, which must fit at 1280 px: " + "." * 16,
             stdout("y" * 88 + "\n")),
        code("glue('ch1-fig', fig)", {"output_type": "display_data", "data": {GLUE + "image/png": sharp,
                                                                            GLUE + "text/plain": "<Figure>"},
                                      "metadata": {"image/png": {"width": 200, "height": 100},
                                                   "scrapbook": {"name": "ch1-fig", "mime_prefix": GLUE}}}),
        md("```{glue:figure} ch1-fig\n:name: ch1-fig\n\nA sharp figure.\n```"),
        md("```{exercise}\n:label: ch1-ex1\n\nA question.\n```"),
        md("```{solution-start} ch1-ex1\n:class: dropdown\n```", "solution"),
        code("answer = 42", stdout("SECRET OUTPUT\n"), tags=["solution"]),
        code("assert answer == 42", tags=["check"]),
        md("*Answer.* SECRET ANSWER.", "solution"),
        md("```{solution-end}\n```", "solution"),
    )


def failing_chapter():
    return notebook(
        md("# 2. A chapter that fails\n" + BADGE.format("02_fail")),
        code("wide = " + " + ".join(["1"] * 40), stdout("z" * 150 + "\n")),
        code("plt.show()", {"output_type": "display_data", "data": {"image/png": png(2, 1, 50),
                                                                    "text/plain": "<Figure>"}, "metadata": {}}),
        md('<div style="width: 700px">a box 700 px wide</div>\n\n<img src="missing.png" alt="gone">\n\n'
           "<script>undefinedFunction();</script>"),
        md("```{exercise}\n:label: ch2-ex1\n\nA question.\n```"),
        md("```{solution-start} ch2-ex1\n```", "solution"),  # no :class: dropdown
        code('print("VISIBLE SOLUTION")', stdout("VISIBLE SOLUTION\n"), tags=["solution"]),
        md("```{solution-end}\n```", "solution"),
        code('print("old style")', stdout("OLD STYLE SOLUTION\n"), tags=["solution", "hide-input"]),
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    book = tmp_path_factory.mktemp("book")
    for folder in ("_ext", "_static"):
        shutil.copytree(ROOT / folder, book / folder)
    shutil.copy(ROOT / "references.bib", book)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (book / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (book / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "intro",
        "parts": [{"caption": "Chapters", "numbered": True,
                   "chapters": [{"file": "notebooks/01_pass"}, {"file": "notebooks/02_fail"}]}]}))
    (book / "intro.md").write_text("# Intro\n\nAs {cite:t}`turri2026fewchannels` show.\n\n"
                                   "```{bibliography}\n```\n")
    (book / "notebooks").mkdir()
    (book / "notebooks" / "01_pass.ipynb").write_text(json.dumps(passing_chapter()))
    (book / "notebooks" / "02_fail.ipynb").write_text(json.dumps(failing_chapter()))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    build = subprocess.run([str(jupyter_book), "build", str(book), "-W", "--keep-going"], check=False,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    failures, stats = check_book.check(book / "_build" / "html", toc=book / "_toc.yml")
    assert stats is not None, failures
    return book, failures, stats


def test_a_chapter_following_the_conventions_passes(checked):
    _, failures, stats = checked
    assert not [f for f in failures if not f.startswith("notebooks/02_fail")], failures
    assert stats["pages"] == 4 and stats["notebooks"] == 2 and stats["colab"] == 2
    assert stats["solutions"] == 3 and stats["blocks"] > 0 and stats["scaled"] == 2


def test_each_failure_is_reported_precisely(checked):
    _, failures, _ = checked
    fail = "\n".join(failures)
    expected = [
        "notebooks/02_fail [1280 px]: code cell 1 input (pre) scrolls sideways",  # a 164-character line
        "longest line 164 characters",
        "code cell 1 output (pre) scrolls sideways",
        "longest line 150 characters",
        "is shown 100 px wide but is only 100x50 px",  # a 50 dpi figure at natural size
        "shown at most 66 px",
        'is visible before it is opened: "print ( "VISIBLE SOLUTION" ) VISIBLE SOLUTION"',
        "tagged solution outside a {solution-start} block is visible before it is opened",
        "notebooks/02_fail [390 px]: the page scrolls sideways",
        "a box 700 px wide",
        "notebooks/02_fail: image did not load: missing.png",
        "JavaScript error: uncaught ReferenceError: undefinedFunction is not defined",
    ]
    missing = [e for e in expected if e not in fail]
    assert not missing, f"not reported: {missing}\nreported:\n{fail}"
    assert not any("THEBE_JS_URL" in f or "theme mode" in f for f in failures), failures


def test_references_are_author_year(checked):
    book, _, _ = checked
    html = (book / "_build" / "html" / "intro.html").read_text()
    assert "Turri <em>et al.</em>" in html and "Turri et al., 2026" in html  # in the text and the list
    assert html.count("const THEBE_JS_URL") <= 1
