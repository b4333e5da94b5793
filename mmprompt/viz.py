"""Plots used by the notebooks: a scene with its boxes and texts, and a gold box next to a predicted one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GOLD_COLOR = "#1a9850"
PRED_COLOR = "#d73027"


def _as_array(image) -> np.ndarray:
    """PIL image, ``uint8[H, W, 3]`` array, or a normalised ``[3, S, S]`` tensor in [-1, 1]."""
    try:
        import torch

        if isinstance(image, torch.Tensor):
            from mmprompt.data.preprocess import denormalize

            return denormalize(image)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"image: expected an RGB image, got an array of shape {arr.shape}")
    return arr


def _boxes(boxes) -> list[list[float]]:
    if boxes is None:
        return []
    if hasattr(boxes, "detach"):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=float)
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: expected [x0, y0, x1, y1] or a list of them, got shape {arr.shape}")
    return arr.tolist()


def draw_example(
    image,
    boxes: Sequence[Sequence[float]] | Sequence[float] | None = None,
    texts: Sequence[str] | str | None = None,
    ax=None,
    *,
    pred_boxes: Sequence[Sequence[float]] | Sequence[float] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
):
    """Draw an image with gold ``boxes`` (solid green), optional ``pred_boxes`` (dashed red), optional
    per-box ``labels`` and ``texts`` written under the image. Boxes are (x0, y0, x1, y1) in the image's
    pixels. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    arr = _as_array(image)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.6))
    ax.imshow(arr, interpolation="nearest")
    gold, pred = _boxes(boxes), _boxes(pred_boxes)
    for k, b in enumerate(gold):
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=GOLD_COLOR, linewidth=2))
        if labels is not None and k < len(labels):
            ax.text(b[0], b[1] - 1, labels[k], color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": GOLD_COLOR, "alpha": 0.8, "pad": 1, "linewidth": 0})  # fmt: skip
    for b in pred:
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=PRED_COLOR,
                               linewidth=2, linestyle="--"))  # fmt: skip
    ax.set_xlim(-0.5, arr.shape[1] - 0.5)
    ax.set_ylim(arr.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if texts is not None:
        lines = [texts] if isinstance(texts, str) else list(texts)
        ax.set_xlabel("\n".join(_wrap(t) for t in lines), fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def _wrap(text: str, width: int = 48) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    lines.append(cur)
    return "\n".join(lines)


def draw_grid(examples: Sequence[dict], ncols: int = 4, size: float = 3.0):
    """Several :func:`draw_example` calls in a grid; each dict holds its keyword arguments (``image`` ...).
    Returns the figure."""
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError("examples: need at least one example to draw")
    nrows = (len(examples) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.8) * nrows), squeeze=False)
    for ax, ex in zip(axes.flat, examples):
        draw_example(ax=ax, **ex)
    for ax in list(axes.flat)[len(examples):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
