"""Plots used by the notebooks: a scene with its boxes and texts, a gold box next to a predicted one, a grid of
methods' predictions on the same examples, and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmprompt.core.checks import check_int

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
    wrap: int = 48,
):
    """Draw an image with gold ``boxes`` (solid green), optional ``pred_boxes`` (dashed red), optional
    per-box ``labels`` and ``texts`` written under the image, wrapped at ``wrap`` characters. Boxes are
    (x0, y0, x1, y1) in the image's pixels. Returns the matplotlib Axes."""
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
        ax.set_xlabel(_caption(lines, wrap), fontsize=8)
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


def _caption(lines: Sequence[str], width: int) -> str:
    return "\n".join(_wrap(t, width) for t in lines)


#: Characters of 8-pt caption text that fit in one inch of axes width (with a margin between columns).
_CHARS_PER_INCH = 12.5


def draw_grid(examples: Sequence[dict], ncols: int = 4, size: float = 3.0):
    """Several :func:`draw_example` calls in a grid; each dict holds its keyword arguments (``image`` ...).
    Captions are wrapped to the column width and every row is as tall as its longest caption needs, so no
    caption runs into a neighbour or into the row below. Returns the figure."""
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError("examples: need at least one example to draw")
    nrows = (len(examples) + ncols - 1) // ncols
    wrap = max(12, int(size * _CHARS_PER_INCH))
    texts = [ex.get("texts") for ex in examples]
    n_lines = max(_caption([t] if isinstance(t, str) else list(t), wrap).count("\n") + 1 if t else 0
                  for t in texts)
    row_height = size + 0.45 + 0.15 * n_lines  # image, title, caption lines (8 pt ≈ 0.15 in)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, row_height * nrows), squeeze=False)
    for ax, ex in zip(axes.flat, examples):
        draw_example(ax=ax, **{"wrap": wrap, **ex})
    for ax in list(axes.flat)[len(examples):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _prediction_texts(task: str, record, prediction, reference) -> list[str]:
    """Short lines describing one prediction under its image."""
    if task == "refcoco":
        from mmprompt.data import iou

        score = iou(prediction, reference["box"]) if prediction is not None else 0.0
        return [f'"{record.text}"', f"IoU {float(score):.2f}"]
    if task == "snli_ve":
        return [f"hypothesis: {record.hypothesis}", f"gold: {reference} | pred: {prediction}"]
    if task == "vqa":
        gold = reference[0] if isinstance(reference, list | tuple) and reference else reference
        return [f"Q: {record.question}", f"gold: {gold} | pred: {prediction}"]
    refs = reference if isinstance(reference, list | tuple) else [reference]
    return [f"pred: {prediction}", f"ref: {refs[0] if refs else ''}"]


def prediction_examples(dataset, predictions: Mapping[str, Sequence[dict]], n: int = 4,
                        start: int = 0) -> list[dict]:
    """Keyword-argument dicts for :func:`draw_grid` showing ``n`` examples (rows) under every method (columns).

    ``dataset``: the evaluated task dataset (``TaskDataset``); ``predictions``: method label -> the
    ``predictions`` rows of an evaluation or :class:`~mmprompt.experiment.tune.TuneResult` (row k belongs to
    dataset item k). Reference expressions get the gold box (green) and the method's box (red, dashed);
    the other tasks get the input text, gold and predicted answer under the image. Use
    ``draw_grid(examples, ncols=len(predictions))``.
    """
    if not predictions:
        raise ValueError("predictions: need at least one method's prediction rows")
    check_int("n", n, 1)
    available = min(len(rows) for rows in predictions.values())
    if start < 0 or start + n > available:
        raise ValueError(f"start={start}, n={n}: only {available} predictions per method are available")
    task = dataset.task
    out = []
    for k in range(start, start + n):
        record, _ = dataset.record(k)
        image = dataset[k]["patch_image"]
        for label, rows in predictions.items():
            row = rows[k]
            if row.get("id") != record.uniq_id:
                raise ValueError(f"predictions[{label!r}][{k}] is {row.get('id')!r} but dataset item {k} is "
                                 f"{record.uniq_id!r}: pass the rows of an evaluation of this dataset")
            pred, ref = row["prediction"], row["reference"]
            example = {"image": image, "texts": _prediction_texts(task, record, pred, ref), "title": label}
            if task == "refcoco":
                example.update(boxes=ref["box"], pred_boxes=pred)
            out.append(example)
    return out


def plot_histories(histories: Mapping[str, Sequence[dict]], key: str = "loss", event: str = "train", ax=None,
                   *, smooth: int = 1, title: str | None = None):
    """Training curves: ``key`` of the ``event`` records (``"train"`` losses, ``"eval"`` metrics) of each
    history (a :class:`~mmprompt.experiment.tune.TuneResult` ``history``) against the step, one line per label,
    optionally smoothed by a running mean over ``smooth`` records. Returns the Axes."""
    import matplotlib.pyplot as plt

    check_int("smooth", smooth, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.4))
    drawn = 0
    for label, history in histories.items():
        rows = [r for r in history if r.get("event") == event and r.get(key) is not None]
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows], dtype=float)
        values = np.array([r[key] for r in rows], dtype=float)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
            steps = steps[smooth - 1:]
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, ms=3, label=label)
        drawn += 1
    if drawn == 0:
        raise ValueError(f"no history has {event!r} records with {key!r}; keys seen: "
                         f"{sorted({k for h in histories.values() for r in h for k in r})}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key)
    ax.set_title(title if title is not None else f"{key} ({event})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax


def _gold_texts(task: str, record, reference) -> list[str]:
    """The input text and the gold target of one example."""
    if task == "refcoco":
        return [f'"{record.text}"']
    if task == "snli_ve":
        return [f"hypothesis: {record.hypothesis}", f"gold: {reference}"]
    if task == "vqa":
        gold = reference[0] if isinstance(reference, list | tuple) and reference else reference
        return [f"Q: {record.question}", f"gold: {gold}"]
    refs = reference if isinstance(reference, list | tuple) else [reference]
    return [f"ref: {r}" for r in refs[:2]]


def gold_examples(dataset, n: int = 1, start: int = 0) -> list[dict]:
    """Keyword-argument dicts for :func:`draw_grid`: ``n`` examples of a task dataset with their input text
    and gold target (reference expressions: the gold box), titled with the task."""
    check_int("n", n, 1)
    if start < 0 or start + n > len(dataset):
        raise ValueError(f"start={start}, n={n}: the dataset has {len(dataset)} examples")
    out = []
    for k in range(start, start + n):
        record, _ = dataset.record(k)
        item = dataset[k]
        example = {"image": item["patch_image"], "texts": _gold_texts(dataset.task, record, item["ref"]),
                   "title": dataset.task}
        if dataset.task == "refcoco":
            example["boxes"] = item["ref"]["box"]
        out.append(example)
    return out


def mixed_examples(samples: Sequence[dict], datasets: Mapping[str, Any], answers: Sequence[Any]) -> list[dict]:
    """Keyword-argument dicts for :func:`draw_grid`: one mixed batch's items (each from the dataset of its
    ``task``) with the answer given to each, titled with the task (and so the prompt) that answered it."""
    if len(samples) != len(answers) or not samples:
        raise ValueError(f"{len(samples)} samples and {len(answers)} answers: need one answer per sample")
    out = []
    for item, answer in zip(samples, answers):
        task = item["task"]
        ds = datasets[task]
        record = next(ds.record(k)[0] for k in range(len(ds)) if ds.record(k)[0].uniq_id == item["id"])
        example = {"image": item["patch_image"], "texts": _prediction_texts(task, record, answer, item["ref"]),
                   "title": f"prompt: {task}"}
        if task == "refcoco":
            example.update(boxes=item["ref"]["box"], pred_boxes=answer)
        out.append(example)
    return out


def plot_pretrain_history(history: Sequence[dict], ax=None, *, title: str | None = None):
    """Pretraining curves from a ``pretrain.json`` history (records carry their curriculum ``stage`` and
    per-stage ``step``): training loss and validation loss against the global step, stage ends dotted.
    Returns the Axes."""
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("history is empty; expected the 'history' list of a pretrain.json")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    offset, train, val, ends = 0, [], [], []
    for stage in sorted({r.get("stage", 0) for r in history}):
        rows = [r for r in history if r.get("stage", 0) == stage]
        train += [(offset + r["step"], r["loss"]) for r in rows if r.get("event") == "train" and "loss" in r]
        val += [(offset + r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        offset += max((r.get("step", 0) for r in rows), default=0)
        ends.append(offset)
    if train:
        ax.plot(*zip(*train), lw=0.8, label="train loss (label-smoothed)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    for end in ends[:-1]:
        ax.axvline(end, color="grey", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title if title is not None else "Pretraining (curriculum stage ends dotted)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return ax
