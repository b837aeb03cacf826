"""pytest configuration shared by the helpers tests (tests/) and the notebook checks (nbval on notebooks/).

It lives at the repository root so that it applies to both. The only hook is for nbval (0.11): when a notebook is
collected, volatile outputs are left out of the comparison. Only cells tagged ``nbval-check-output`` are compared at
all (``--nbval-lax``); in them, after tests/nbval_sanitize.cfg:

- compared: stdout, ``text/plain`` results, and the values glued for the book (myst-nb ``glue`` outputs, mime
  ``application/papermill.record/text/plain``): a glued number or sentence must come out the same. A glued table or
  figure is compared through its text form only (the DataFrame's text, "<Figure size 800x300 with 6 Axes>");
- not compared: images and HTML (plain or glued), widgets, JavaScript, stderr (warnings, progress bars), output
  metadata and execution counts.

tests/test_notebook_conventions.py::test_nbval_compares_glued_text_not_figures runs nbval on a small notebook to
hold this: a changed glued value fails, a redrawn glued figure passes.
"""

GLUED = "application/papermill.record/"  # values glued for the book: figures and HTML are volatile, text is checked
VOLATILE = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "application/javascript",
            "application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json", "stderr",
            GLUED + "image/png", GLUED + "image/jpeg", GLUED + "text/html", GLUED + "image/svg+xml",
            GLUED + "application/javascript")


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):  # an nbval notebook collector; other collectors are untouched
        collector.skip_compare = tuple(collector.skip_compare) + VOLATILE
