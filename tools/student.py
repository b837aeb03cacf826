"""The student edition of the chapters, and grading a filled-in notebook.

    python tools/student.py                      # student/NN_*.ipynb for every notebook of _toc.yml (`make student`)
    python tools/student.py --out DIR [NB ...]   # other notebooks or another folder
    python tools/student.py --grade FILLED.ipynb [...]   # run a filled-in notebook, report its exercise checks

A student notebook is the chapter with every cell tagged ``solution`` removed (the ``{solution-start}`` and
``{solution-end}`` markers, the solution's code and its written answer), an empty cell where each solution was
(a code cell ``# your answer``, or a markdown cell when the solution had no code), the cells tagged ``check`` kept,
and every output cleared. A notebook without exercises comes out the same, outputs cleared. ``student/`` is
git-ignored (the tool writes ``student/.gitignore``).

``--grade`` executes the notebook top to bottom (later cells run even when one fails) and reports, per exercise,
which ``check`` cells passed; the exit status is 1 when any check fails, 0 when all pass or there are none.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toc import chapter_paths

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "student"
SOLUTION, CHECK = "solution", "check"
PLACEHOLDER_CODE = "# your answer"
PLACEHOLDER_MARKDOWN = "*Your answer:*"
NOTE = ("> **Student edition.** The solutions are removed: write yours in the cells marked `# your answer` "
        "(or *Your answer*). The cells that follow them, tagged `check`, test your results; an instructor runs them "
        "all with `python tools/student.py --grade this_notebook.ipynb`.")
EXERCISE = re.compile(r"(?:```|:::)\{exercise(?:-start)?\}[^\n]*\n(?::[^\n]*\n)*?:label:\s*(\S+)", re.MULTILINE)
SOLUTION_START = re.compile(r"^(?:```|:::)\{solution-start\}", re.MULTILINE)
SOLUTION_END = re.compile(r"^(?:```|:::)\{solution-end\}", re.MULTILINE)


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _cell(cell_type: str, text: str, cell_id: str | None = None) -> dict:
    cell = {"cell_type": cell_type, "metadata": {}, "source": text}
    if cell_id:
        cell["id"] = cell_id
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def solution_blocks(cells: list[dict]) -> list[list[int]]:
    """Indices of each solution: from a ``{solution-start}`` cell to its ``{solution-end}``, or (older notebooks)
    a run of ``solution``-tagged cells, possibly interleaved with ``check`` cells."""
    blocks, current, gated = [], None, False
    for i, cell in enumerate(cells):
        text, t = source(cell), tags(cell)
        if cell["cell_type"] == "markdown" and SOLUTION_START.search(text):
            if current:
                blocks.append(current)
            current, gated = [i], True
            if SOLUTION_END.search(text):  # a one-cell solution
                blocks.append(current)
                current, gated = None, False
            continue
        if current is not None:
            if gated or SOLUTION in t or CHECK in t:
                current.append(i)
                if gated and cell["cell_type"] == "markdown" and SOLUTION_END.search(text):
                    blocks.append(current)
                    current, gated = None, False
                continue
            blocks.append(current)
            current = None
        if SOLUTION in t:
            current, gated = [i], False
    if current:
        blocks.append(current)
    return blocks


def student_notebook(nb: dict) -> dict:
    """The student edition of one notebook (a new dict; ``nb`` is not changed)."""
    nb = copy.deepcopy(nb)
    cells = nb["cells"]
    with_ids = (nb.get("nbformat", 4), nb.get("nbformat_minor", 0)) >= (4, 5)  # cell ids from nbformat 4.5 on
    placeholder_at = {}  # index of the first removed cell of a block -> the placeholder that replaces it
    for n, block in enumerate(solution_blocks(cells), 1):
        removed = [i for i in block if SOLUTION in tags(cells[i])]
        if not removed:
            continue
        code = [i for i in removed if cells[i]["cell_type"] == "code"]
        cell_id = f"your-answer-{n}" if with_ids else None
        if code:
            placeholder_at[code[0]] = _cell("code", PLACEHOLDER_CODE, cell_id)
        else:
            placeholder_at[removed[0]] = _cell("markdown", PLACEHOLDER_MARKDOWN, cell_id)
    out = []
    for i, cell in enumerate(cells):
        if i in placeholder_at:
            out.append(placeholder_at[i])
        if SOLUTION in tags(cell):
            continue
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        out.append(cell)
    if out and out[0]["cell_type"] == "markdown" and (placeholder_at or any(CHECK in tags(c) for c in out)):
        out.insert(1, _cell("markdown", NOTE, "student-edition" if with_ids else None))
    nb["cells"] = out
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def write_student_edition(notebooks: list[Path], out_dir: Path = OUT) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".gitignore").write_text("# written by tools/student.py (make student)\n*\n")
    written = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        target = out_dir / path.name
        target.write_text(json.dumps(student_notebook(nb), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


def exercise_of_checks(cells: list[dict]) -> dict[int, str]:
    """For each ``check`` cell, the label of the exercise it belongs to (the last ``{exercise}`` above it)."""
    label, out, n = None, {}, 0
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            found = EXERCISE.findall(source(cell))
            if found:
                label = found[-1]
        elif CHECK in tags(cell):
            n += 1
            out[i] = label or f"check {n}"
    return out


def _error_line(outputs: list[dict]) -> str | None:
    for o in outputs:
        if o.get("output_type") == "error":
            value = o.get("evalue", "").strip().splitlines()
            return f"{o.get('ename', 'Error')}: {value[0] if value else ''}".rstrip(": ")
    return None


def grade(path: Path, timeout: int = 600, kernel: str | None = None) -> tuple[list[tuple[str, int, str | None]],
                                                                               list[str]]:
    """Run the notebook; returns ([(exercise, cell index, error or None) per check cell], [other cells' errors])."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.validator import normalize

    with warnings.catch_warnings():  # a hand-made notebook may lack cell ids: normalize adds them, quietly
        warnings.simplefilter("ignore")
        _, raw = normalize(json.loads(path.read_text(encoding="utf-8")))
    nb = nbformat.from_dict(raw)
    checks = exercise_of_checks(nb.cells)
    if not checks:
        return [], []
    kernel = kernel or nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=True,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    client.execute()
    results = []
    for i, label in checks.items():
        err = _error_line(nb.cells[i].get("outputs", []))
        if err == "AssertionError":  # a bare assert: name the one that failed
            asserts = [line.strip() for line in source(nb.cells[i]).splitlines() if line.strip().startswith("assert")]
            err += f" (the cell asserts: {'; '.join(asserts)[:120]})" if asserts else ""
        results.append((label, i, err))
    others = [f"cell {i} raised {err}" for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and i not in checks and (err := _error_line(c.get("outputs", [])))]
    return results, others


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: every notebook of _toc.yml)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the student edition (default: student/)")
    parser.add_argument("--grade", nargs="+", type=Path, metavar="FILLED", help="filled-in notebooks to grade")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell when grading (default 600)")
    parser.add_argument("--kernel", help="kernel for grading (default: the notebook's own)")
    args = parser.parse_args(argv)

    if args.grade:
        failed = 0
        for path in args.grade:
            results, others = grade(path, timeout=args.timeout, kernel=args.kernel)
            if not results:
                print(f"{path}: no exercise checks (no cell tagged `{CHECK}`)")
                continue
            passed = sum(err is None for *_, err in results)
            print(f"{path}: {passed} of {len(results)} checks passed")
            for label, i, err in results:
                print(f"  {'PASS' if err is None else 'FAIL'}  {label} (cell {i})" + (f": {err}" if err else ""))
            for line in others:
                print(f"  note: {line} (not a check; later checks may fail because of it)")
            failed += len(results) - passed
        return 1 if failed else 0

    notebooks = args.notebooks or [ROOT / p for p in chapter_paths() if p.endswith(".ipynb")]
    written = write_student_edition(notebooks, args.out)
    for path in written:
        nb = json.loads(path.read_text(encoding="utf-8"))
        n_checks = sum(CHECK in tags(c) for c in nb["cells"])
        n_answers = sum(source(c) in (PLACEHOLDER_CODE, PLACEHOLDER_MARKDOWN) for c in nb["cells"])
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
              f"{n_answers} answer cells, {n_checks} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
