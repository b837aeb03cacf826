"""Conventions every chapter notebook follows, so that the book builds, opens on Colab and is checked by nbval.

Checked without running anything: the title and Colab badge, the Colab-only setup cell, stored outputs, tags,
size; and that every entry of _toc.yml exists and every notebook is in it.
"""
import json
import re
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

sys.path.insert(0, str(ROOT / "tools"))
from toc import toc_files  # noqa: E402  (the page list, shared with tools/check_book.py)


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    path = request.param
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_toc_entries_exist():
    missing = [f for f in toc_files()
               if not any((ROOT / (f + ext)).exists() for ext in ("", ".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_notebook_is_in_toc():
    listed = {f.removesuffix(".ipynb") for f in toc_files()}
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml (add one `- file:` line each): {unlisted}"


def test_title_and_colab_badge(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and source(first).startswith("# "), \
        "the first cell must be markdown starting with a '# Title'"
    target = f"https://colab.research.google.com/github/{OWNER_REPO}/blob/{BRANCH}/notebooks/{path.name}"
    assert f"]({target})" in source(first), f"the first cell must carry the Colab badge linking to {target}"


def test_colab_only_setup_cell(notebook):
    _, nb = notebook
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "no code cells"
    setup = source(code[0])
    guard = re.search(r"""^if ["']google\.colab["'] in sys\.modules:\s*\n((?:[ \t]+.*\n?)+)""", setup, re.M)
    assert guard, "the first code cell must be the setup cell: `if \"google.colab\" in sys.modules:`"
    assert re.search(rf"""pip install .*["']?git\+{re.escape(REPO_URL)}(\.git)?(@[\w./-]+)?["']?""", guard.group(1)), \
        f"the setup cell must install git+{REPO_URL} inside the google.colab guard"


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
    assert "widgets" not in nb.get("metadata", {}), "clear the widget state metadata before saving"


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
