"""nbval settings for executing the workbook's notebooks under pytest (``python -m pytest -q``).

The notebooks run in lax mode (``--nbval-lax`` in pyproject.toml): a cell fails the test when it raises;
outputs are compared only for the few cells tagged ``nbval-check-output`` (deterministic facts: the
backbone's shape and the prefix layout in 01, the paper's prefix parameter counts in 10). The notebooks are
committed without outputs, so the expected outputs of those cells live in ``checked_outputs.json``
(written by ``python -m mmprompt.notebook_tools record``) and are attached to nbval's cells below. Every
other fact a reader would check by eye is ``assert``-ed inside the cell that computes it, which fails in
Jupyter, papermill and CI alike.

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


def pytest_collection_modifyitems(items) -> None:
    """The recorded outputs of the checked cells, for nbval to compare."""
    from mmprompt.workbook.notebook_tools import attach_checked_outputs

    attach_checked_outputs(items)
