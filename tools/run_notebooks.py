"""Execute notebooks in place so their stored outputs (what the online book shows and nbval checks) are real.

Usage: python tools/run_notebooks.py [notebooks/NAME.ipynb ...]   (default: every notebook, in order)
Cells tagged ``skip-execution`` (GPU-only) are left as they are. Volatile metadata (execution timestamps,
widget state) is dropped so the files stay small and diffs stay readable.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    skipped = [c for c in nb.cells if "skip-execution" in c.metadata.get("tags", [])]
    for c in skipped:  # nbclient has no skip tag of its own: hide them as raw cells while executing
        c.cell_type, c._was = "raw", "code"
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    for c in skipped:
        c.cell_type = c.pop("_was")
        c.setdefault("outputs", [])
        c.setdefault("execution_count", None)
    nb.metadata.pop("widgets", None)
    for c in nb.cells:
        c.metadata.pop("execution", None)
        c.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path("notebooks").glob("*.ipynb"))
    for p in paths:
        print(f"{p}: executed in {run(p):.1f} s", flush=True)
