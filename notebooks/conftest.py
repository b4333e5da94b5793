"""nbval settings for executing the workbook's notebooks under pytest (``python -m pytest -q``).

The notebooks run in lax mode (``--nbval-lax`` in pyproject.toml): a cell fails the test when it raises,
outputs are not compared. Notebooks are committed without outputs (``python -m mmprompt.notebook_tools
strip``), so there is nothing stored to compare against; instead, the deterministic facts a reader would
otherwise check by eye (parameter counts, table shapes, fold equivalence, the paper's numbers) are
``assert``-ed inside the cells that compute them, which fails the test just as an output mismatch would,
and does so in Jupyter, papermill and CI alike. Marking a cell ``# NBVAL_CHECK_OUTPUT`` would require
committing outputs, so no cell is marked.

Here: figures use the non-interactive Agg backend, and stderr (progress bars, warnings), HTML,
JavaScript and widget outputs are never compared.
"""

from __future__ import annotations

import os

os.environ["MPLBACKEND"] = "Agg"  # inherited by the kernel nbval starts (--nbval-current-env)

_NEVER_COMPARED = ("stderr", "text/html", "application/javascript", "application/vnd.jupyter.widget-view+json")


def pytest_collectstart(collector) -> None:
    """nbval's documented hook for ignoring output types in comparisons."""
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(dict.fromkeys((*collector.skip_compare, *_NEVER_COMPARED)))
