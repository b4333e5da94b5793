"""Box quantisation into ``<bin_i>`` tokens and back, and box geometry.

A coordinate ``c`` of an image side of length ``size`` maps to bin ``round(c / size * (num_bins - 1))``
(round half up, clipped to ``[0, num_bins - 1]``); a bin ``b`` maps back to ``b / (num_bins - 1) * size``.
The round trip is therefore off by at most half a bin width, ``size / (num_bins - 1) / 2``.

Two conventions:

* the nano world's (:func:`box_to_bins`): the normaliser is the side the box lives in (the resized
  ``patch_image_size``), so the full bin range is used; the shipped nano checkpoints are trained with it;
* OFA's (:func:`ofa_box_bins`), for OFA's data and checkpoints: the box is resized with the image, divided by a
  fixed ``max_image_size`` (512, even when images are resized to 480) and rounded half to even in float32, as
  ``data/mm_data/refcoco_dataset.py`` does; a bin decodes to ``b / (num_bins - 1) * max_image_size`` pixels of
  the resized image (:func:`bins_to_box` with ``image_size=max_image_size``).

Boxes are ``(x0, y0, x1, y1)`` in pixels; ``image_size`` is an int (square) or ``(width, height)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

BIN_RE = re.compile(r"<bin_(\d+)>")


def image_sides(image_size: int | Sequence[float]) -> tuple[float, float]:
    """(width, height) of a square side or a (width, height) pair; sides must be positive."""
    if isinstance(image_size, (int, float)):
        w = h = float(image_size)
    else:
        w, h = (float(v) for v in image_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size={image_size!r}: sides must be positive")
    return w, h


def _check_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins={num_bins!r}: must be an int >= 2")


def quantize(coord: float, size: float, num_bins: int) -> int:
    """The bin of one coordinate (round half up, clipped)."""
    _check_bins(num_bins)
    b = math.floor(coord / size * (num_bins - 1) + 0.5)
    return int(min(max(b, 0), num_bins - 1))


def dequantize(bin_index: int, size: float, num_bins: int) -> float:
    _check_bins(num_bins)
    return bin_index / (num_bins - 1) * size


def box_to_bins(box: Sequence[float], image_size: int | Sequence[float], num_bins: int) -> list[int]:
    """(x0, y0, x1, y1) pixels -> four bin indices."""
    if len(box) != 4:
        raise ValueError(f"box={box!r}: expected four numbers (x0, y0, x1, y1)")
    w, h = image_sides(image_size)
    return [quantize(box[0], w, num_bins), quantize(box[1], h, num_bins), quantize(box[2], w, num_bins), quantize(box[3], h, num_bins)]


def ofa_box_bins(box: Sequence[float], orig_size: Sequence[float], patch_image_size: int,
                 max_image_size: int, num_bins: int) -> list[int]:
    """OFA's RefCOCO target bins: ``box`` (pixels of an image of ``orig_size`` (w, h)) resized with the image to
    ``patch_image_size`` square, divided by ``max_image_size``, times ``num_bins - 1``, rounded (float32,
    half to even, as torch does). Bins are not clipped (OFA does not clip either)."""
    if len(box) != 4:
        raise ValueError(f"box={box!r}: expected four numbers (x0, y0, x1, y1)")
    _check_bins(num_bins)
    if not isinstance(max_image_size, int) or max_image_size < 1:
        raise ValueError(f"max_image_size={max_image_size!r}: must be an int >= 1")
    w, h = image_sides(orig_size)
    ratio = torch.as_tensor([patch_image_size / w, patch_image_size / h] * 2)
    scaled = torch.tensor([float(v) for v in box]) * ratio / max_image_size
    return [int(v) for v in (scaled * (num_bins - 1)).round().tolist()]


def bins_to_box(bins: Sequence[int], image_size: int | Sequence[float], num_bins: int) -> list[float]:
    """Four bin indices -> (x0, y0, x1, y1) pixels."""
    if len(bins) != 4:
        raise ValueError(f"bins={bins!r}: expected four bin indices")
    w, h = image_sides(image_size)
    return [dequantize(bins[0], w, num_bins), dequantize(bins[1], h, num_bins), dequantize(bins[2], w, num_bins), dequantize(bins[3], h, num_bins)]


def bin_tokens(bins: Sequence[int]) -> str:
    """"<bin_3> <bin_10> <bin_20> <bin_31>"."""
    return " ".join(f"<bin_{b}>" for b in bins)


def box_to_tokens(box: Sequence[float], image_size: int | Sequence[float], num_bins: int) -> str:
    return bin_tokens(box_to_bins(box, image_size, num_bins))


def tokens_to_box(text: str, image_size: int | Sequence[float], num_bins: int) -> list[float] | None:
    """The box of the first four ``<bin_i>`` tokens in ``text`` (None when there are fewer than four)."""
    bins = [int(m) for m in BIN_RE.findall(text)][:4]
    return bins_to_box(bins, image_size, num_bins) if len(bins) == 4 else None


def scale_box(box: Sequence[float], from_size: Sequence[float], to_size: int | Sequence[float]) -> list[float]:
    """Rescale a box from an image of ``from_size`` (w, h) to one of ``to_size`` (square resize)."""
    fw, fh = image_sides(from_size)
    tw, th = image_sides(to_size)
    return [box[0] * tw / fw, box[1] * th / fh, box[2] * tw / fw, box[3] * th / fh]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 for empty ones)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
