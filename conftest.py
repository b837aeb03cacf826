"""pytest configuration shared by the helpers tests (tests/) and the notebook checks (nbval on notebooks/).

It lives at the repository root so that it applies to both. The only hook is for nbval: when a notebook is
collected, volatile outputs — figures, HTML, widgets, JavaScript and stderr (warnings, progress bars) — are left out
of the comparison. Only cells tagged ``nbval-check-output`` are compared at all (``--nbval-lax``); their stdout,
sanitised by tests/nbval_sanitize.cfg, is what must match the stored output.
"""

GLUED = "application/papermill.record/"  # values glued for the book: figures and HTML are volatile, text is checked
VOLATILE = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "application/javascript",
            "application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json", "stderr",
            GLUED + "image/png", GLUED + "image/jpeg", GLUED + "text/html", GLUED + "image/svg+xml")


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):  # an nbval notebook collector; other collectors are untouched
        collector.skip_compare = tuple(collector.skip_compare) + VOLATILE
