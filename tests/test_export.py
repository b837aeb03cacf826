"""tools/export.py: helpers/chapters.py is exactly what the chapters' #@save cells generate (d2l-style export)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import export


def test_chapters_module_is_fresh():
    result = subprocess.run([sys.executable, "tools/export.py", "--check"], check=False, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, (result.stderr + result.stdout).strip() + \
        " (a chapter's #@save cell changed: run `python tools/export.py` and commit helpers/chapters.py)"


def saved_notebook(tmp_path, *sources, name="01_x.ipynb"):
    cells = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
             for s in sources]
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_export_collects_saved_cells(tmp_path):
    nb = saved_notebook(tmp_path, "import torch\nfrom helpers.hooks import record\n\n\ndef top_k(x, k):  #@save\n"
                                  "    return x.topk(k).indices", "print('not saved')")
    text = export.build([nb])
    assert "from .hooks import record" in text and "import torch" in text
    assert "def top_k(x, k):\n    return x.topk(k).indices" in text and "):  #@save" not in text
    assert "not saved" not in text
    compile(text, "chapters.py", "exec")


@pytest.mark.parametrize("body, message", [
    ("x = compute()  #@save", "may hold only imports"),
    ("import helpers.hooks  #@save", "write `from helpers.<module> import name`"),
    ("from helpers.transport import cache  #@save", "may import from"),
])
def test_export_refuses_cells_that_would_run_on_import(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        export.build([saved_notebook(tmp_path, body)])
