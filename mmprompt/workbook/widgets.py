"""ipywidgets used by the notebooks.

:func:`prefix_explorer`: sliders over prompt length and depth whose report (trainable parameters, their share
of the backbone, each site's table and per-layer key/value shapes) is recomputed by the kernel on every
change. CSS classes (the JupyterLab browser test finds the widgets by them): the length slider
``mmprompt-explorer-slider``, the depth slider ``mmprompt-explorer-depth``, the report
``mmprompt-explorer-output``.
"""

from __future__ import annotations

import html
from dataclasses import replace

import torch.nn as nn

from mmprompt.workbook.prefix_layout import prefix_budget
from mmprompt.tuning.prefix import PrefixConfig
from mmprompt.tuning.sites import discover_sites, stack_of

__all__ = ["SLIDER_CLASS", "DEPTH_CLASS", "OUTPUT_CLASS", "budget_html", "prefix_explorer", "show_with_fallback"]

SLIDER_CLASS = "mmprompt-explorer-slider"
DEPTH_CLASS = "mmprompt-explorer-depth"
OUTPUT_CLASS = "mmprompt-explorer-output"


def budget_html(config: PrefixConfig, budget: dict) -> str:
    """The explorer's report for ``config`` and its :func:`mmprompt.workbook.prefix_layout.prefix_budget`."""
    depth = "every layer" if config.depth is None else f"{config.depth} layer(s) from the {config.depth_from}"
    head = (f"<b>P = {config.length}, depth = {depth}: {budget['trainable']:,} trainable parameters "
            f"= {100 * budget['fraction_of_backbone']:.2f} % of the backbone's {budget['backbone']:,}</b>")
    if budget["after_fold"] != budget["trainable"]:
        head += f" ({budget['after_fold']:,} after folding the MLP)"
    cols = ["site", "layers", "table", "per-layer key/value", "trainable"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(s[c]))}</td>" for c in cols) + "</tr>"
                   for s in budget["sites"])
    header = "".join(f"<th>{c}</th>" for c in cols)
    return f"<div>{head}</div><table><tr>{header}</tr>{rows}</table>"


def _cell(value) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _stack_depth(model: nn.Module, config: PrefixConfig) -> int:
    """Layers of the shallowest stack the config's sites use (the largest valid integer depth)."""
    stacks = discover_sites(model).stacks
    return min(stacks[stack_of(kind)].layers for kind in config.sites)


def prefix_explorer(model: nn.Module, config: PrefixConfig | None = None, *, max_length: int = 128):
    """A VBox with a prompt-length slider (1..``max_length``), a depth slider (1..layers; the maximum
    means every layer) and an HTML report that follows them. ``config`` gives the other settings (sites,
    reparameterisation, depth_from) and the start values."""
    import ipywidgets as widgets

    config = config or PrefixConfig(length=16)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < config.length:
        raise ValueError(f"max_length={max_length!r}: must be an integer >= config.length ({config.length})")
    layers = _stack_depth(model, config)
    if config.depth is not None and not isinstance(config.depth, int):
        raise ValueError(f"config.depth={config.depth!r}: the explorer takes None or an integer depth")
    style, layout = {"description_width": "15em"}, widgets.Layout(width="40em")
    length = widgets.IntSlider(value=config.length, min=1, max=max_length, step=1, description="prompt length P",
                               continuous_update=False, style=style, layout=layout)
    length.add_class(SLIDER_CLASS)
    depth = widgets.IntSlider(value=config.depth or layers, min=1, max=layers, step=1, style=style, layout=layout,
                              description=f"depth from the {config.depth_from}", continuous_update=False)
    depth.add_class(DEPTH_CLASS)
    report = widgets.HTML()
    report.add_class(OUTPUT_CLASS)

    def update(_change=None) -> None:
        chosen = replace(config, length=length.value, depth=None if depth.value == layers else depth.value)
        report.value = budget_html(chosen, prefix_budget(model, chosen))

    length.observe(update, names="value")
    depth.observe(update, names="value")
    update()
    return widgets.VBox([length, depth, report])


def show_with_fallback(widget, figure, note: str = "an interactive widget: run the notebook to use it") -> None:
    """Display ``widget`` in one output that also holds ``figure`` as a PNG and ``note`` as text: a live kernel
    renders the widget; a saved copy (GitHub, nbviewer, ``papermill_runs/``) shows the figure instead of the
    widget's bare ``VBox(...)`` repr. Closes ``figure``."""
    import base64
    import io

    import matplotlib.pyplot as plt
    from IPython.display import display

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    plt.close(figure)
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    display({**data, "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": note},
            raw=True)
