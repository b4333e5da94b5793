"""OFA's TSV layouts: one streaming reader (real OFA files and ours) and an atomic writer.

Column layouts (tab-separated, one example per line, images as base64 of the encoded file — OFA writes
URL-safe base64; both alphabets are accepted when reading):

========  ===========================================================================================
task      columns
========  ===========================================================================================
refcoco   uniq_id, image_id, text, region_coord ("x0,y0,x1,y1" pixels), image
snli_ve   uniq_id, image_id, image, hypothesis, caption (premise), label (entailment/contradiction/neutral)
caption   uniq_id, image_id, caption (references joined by "&&"), predicted object labels ("&&"), image
vqa       uniq_id, image_id, question, answers ("conf|!+answer&&conf|!+answer"), predicted objects, image
pretrain  uniq_id, image_id, subtask, source, target, num_objects, image (empty for text-only rows)
========  ===========================================================================================

Columns after the layout's are ignored (OFA reads only its ``--selected-cols``). These are the column orders
OFA's run scripts select (``--selected-cols`` 0,4,2,3 / 0,2,3,4,5 / 0,4,2 /
0,5,2,3,4). The pretraining layout is this project's own (one row per example; see ``data/README.md``).

Bad rows name the file, the line and the problem (:class:`TSVFormatError`). With ``on_error="skip"`` they
are skipped, logged and counted (``reader.skipped``, ``reader.problems``) — never silently turned into a
wrong example.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmprompt.core.atomic import atomic_write
from mmprompt.data.texts import PRETRAIN_SUBTASKS

logger = logging.getLogger(__name__)

LAYOUTS: dict[str, tuple[str, ...]] = {
    "refcoco": ("uniq_id", "image_id", "text", "region_coord", "image"),
    "snli_ve": ("uniq_id", "image_id", "image", "hypothesis", "caption", "label"),
    "caption": ("uniq_id", "image_id", "caption", "predicted_objects", "image"),
    "vqa": ("uniq_id", "image_id", "question", "answers", "predicted_objects", "image"),
    "pretrain": ("uniq_id", "image_id", "subtask", "source", "target", "num_objects", "image"),
}
VE_RAW_LABELS: tuple[str, ...] = ("entailment", "contradiction", "neutral")
ON_ERROR = ("raise", "skip")
IMAGE_MODES = ("full", "header", "none")
BOX_TOLERANCE = 1.0  # pixels a box may exceed the image by (rounding in real annotations)
_SOURCE_OPTIONAL = ("caption", "listing")


class TSVFormatError(ValueError):
    """A bad row: ``path``, 1-based ``line`` and ``problem`` are attributes; the message names all three."""

    def __init__(self, path: str | os.PathLike, line: int, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}")


class RowProblem(ValueError):
    """A problem with one row (no file/line yet); ``kind`` groups problems for the skip counter."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


# ------------------------------------------------------------------ records


@dataclass
class Record:
    """Fields common to every task. ``image`` is a PIL image (None for text-only pretraining rows)."""

    uniq_id: str
    image_id: str
    image: Image.Image | None
    line: int

    @property
    def image_size(self) -> tuple[int, int] | None:
        return None if self.image is None else self.image.size


@dataclass
class RefcocoRecord(Record):
    text: str = ""
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass
class SnliVeRecord(Record):
    hypothesis: str = ""
    premise: str = ""
    label: str = ""  # entailment / contradiction / neutral


@dataclass
class CaptionRecord(Record):
    captions: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)


@dataclass
class VqaRecord(Record):
    question: str = ""
    answers: dict[str, float] = field(default_factory=dict)  # answer -> confidence, in column order
    objects: list[str] = field(default_factory=list)
    objects_column: str = ""  # the raw "&&"-joined column (OFA's --add-object splits it, keeping empty items)


@dataclass
class PretrainRecord(Record):
    subtask: str = ""
    source: str = ""
    target: str = ""
    num_objects: int = 0


# ------------------------------------------------------------------ images


def encode_image(image: Image.Image, fmt: str = "JPEG", **save_kwargs) -> str:
    """URL-safe base64 of the encoded image (OFA's convention)."""
    buf = io.BytesIO()
    image.save(buf, fmt, **save_kwargs)
    return base64.urlsafe_b64encode(buf.getvalue()).decode("ascii")


#: The bytes a complete file of each format ends with (a truncated row loses them).
_TRAILERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _check_complete(img: Image.Image, raw: bytes) -> None:
    """Raise :class:`RowProblem` if the encoded image was cut short: JPEG/PNG must end with their end marker
    (no pixel decoding); other formats are decoded in full."""
    trailer = _TRAILERS.get(img.format or "")
    if trailer is None:
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise RowProblem("image", f"corrupt {img.format} image: not decodable ({err})") from None
    elif not raw.rstrip(b"\x00").endswith(trailer):
        raise RowProblem("image", f"truncated {img.format} image: the data ends before its end marker")


def decode_image(b64: str, mode: str = "full") -> Image.Image:
    """Decode a base64 image (URL-safe or standard alphabet). ``mode="header"`` reads only the header (and
    checks that the data is complete, so a truncated row is caught when a file is indexed).

    Raises :class:`RowProblem` describing the problem (bad base64, not an image, truncated data).
    """
    s = b64.strip()
    if not s:
        raise RowProblem("image", "empty image column")
    try:
        raw = base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RowProblem("image", f"corrupt base64 image ({err})") from None
    try:
        img = Image.open(io.BytesIO(raw))
        if mode == "full":
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RowProblem("image", f"corrupt base64 image: not a decodable image ({err})") from None
    if mode != "full":
        _check_complete(img, raw)
    return img


# ------------------------------------------------------------------ parsing


def _nonempty(value: str, name: str) -> str:
    v = value.strip()
    if not v:
        raise RowProblem("empty", f"empty {name}")
    return v


def _objects(value: str) -> list[str]:
    return [o.strip() for o in value.split("&&") if o.strip()]


def parse_box(value: str, image_size: tuple[int, int] | None) -> tuple[float, float, float, float]:
    parts = value.strip().split(",")
    if len(parts) != 4:
        raise RowProblem("box", f"region_coord {value!r}: expected 'x0,y0,x1,y1'")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise RowProblem("box", f"region_coord {value!r}: not four numbers") from None
    if not (x1 > x0 and y1 > y0):
        raise RowProblem("box", f"region_coord {value!r}: empty box (need x1 > x0 and y1 > y0)")
    if image_size is not None:
        w, h = image_size
        t = BOX_TOLERANCE
        if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
            raise RowProblem("box", f"region_coord {value!r}: box outside the {w}x{h} image")
    return (x0, y0, x1, y1)


def parse_vqa_answers(value: str) -> dict[str, float]:
    """"conf|!+answer&&conf|!+answer" -> {answer: conf} (column order kept)."""
    out: dict[str, float] = {}
    for item in _nonempty(value, "answers").split("&&"):
        conf, sep, ans = item.partition("|!+")
        if not sep:
            raise RowProblem("answers", f"answers item {item!r}: expected 'conf|!+answer'")
        try:
            c = float(conf)
        except ValueError:
            raise RowProblem("answers", f"answers item {item!r}: confidence {conf!r} is not a number") from None
        if not 0.0 <= c <= 1.0 or not ans.strip():
            raise RowProblem("answers", f"answers item {item!r}: need 0 <= conf <= 1 and a non-empty answer")
        out[ans.strip()] = c
    return out


def _image(cols: dict[str, str], mode: str, required: bool) -> Image.Image | None:
    raw = cols["image"]
    if not raw.strip() and not required:
        return None
    if mode == "none":
        return None
    return decode_image(raw, "full" if mode == "full" else "header")


def parse_row(task: str, values: list[str], line: int, images: str = "full") -> Record:
    """Parse one split row into its record; raises :class:`RowProblem` (no file/line yet) on a bad row."""
    layout = LAYOUTS[task]
    if len(values) < len(layout):  # OFA reads columns by position (--selected-cols): extra ones are ignored
        raise RowProblem("columns", f"wrong column count: expected {len(layout)} columns for {task} ({', '.join(layout)}), got {len(values)}")
    cols = dict(zip(layout, values))
    uid = _nonempty(cols["uniq_id"], "uniq_id")
    iid = cols["image_id"].strip()
    if task == "refcoco":
        img = _image(cols, images, True)
        text = _nonempty(cols["text"], "text")
        box = parse_box(cols["region_coord"], img.size if img is not None else None)
        return RefcocoRecord(uid, iid, img, line, text=text, box=box)
    if task == "snli_ve":
        label = cols["label"].strip()
        if label not in VE_RAW_LABELS:
            raise RowProblem("label", f"label {label!r}: allowed {VE_RAW_LABELS}")
        hyp, prem = _nonempty(cols["hypothesis"], "hypothesis"), _nonempty(cols["caption"], "caption (premise)")
        return SnliVeRecord(uid, iid, _image(cols, images, True), line, hypothesis=hyp, premise=prem, label=label)
    if task == "caption":
        caps = [c.strip() for c in _nonempty(cols["caption"], "caption").split("&&")]
        if not all(caps):
            raise RowProblem("empty", f"caption {cols['caption']!r}: an empty reference between '&&'")
        return CaptionRecord(uid, iid, _image(cols, images, True), line, captions=caps, objects=_objects(cols["predicted_objects"]))
    if task == "vqa":
        q = _nonempty(cols["question"], "question")
        ans = parse_vqa_answers(cols["answers"])
        return VqaRecord(uid, iid, _image(cols, images, True), line, question=q, answers=ans,
                         objects=_objects(cols["predicted_objects"]), objects_column=cols["predicted_objects"])
    sub = cols["subtask"].strip()
    if sub not in PRETRAIN_SUBTASKS:
        raise RowProblem("subtask", f"subtask {sub!r}: allowed {PRETRAIN_SUBTASKS}")
    src = cols["source"].strip()
    if not src and sub not in _SOURCE_OPTIONAL:
        raise RowProblem("empty", f"empty source for subtask {sub!r}")
    try:
        n_obj = int(cols["num_objects"])
    except ValueError:
        raise RowProblem("number", f"num_objects {cols['num_objects']!r}: not an integer") from None
    img = _image(cols, images, sub != "infill")
    return PretrainRecord(
        uid, iid, img, line, subtask=sub, source=src, target=_nonempty(cols["target"], "target"), num_objects=n_obj
    )


# ------------------------------------------------------------------ reader


def check_task(task: str) -> str:
    if task not in LAYOUTS:
        raise ValueError(f"task={task!r}: unknown task name; allowed {tuple(LAYOUTS)}")
    return task


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path={str(p)!r}: no such TSV file")
    return p


class TSVReader:
    """Stream the rows of an OFA-layout TSV file as records, never loading the whole file.

    ``on_error``: "raise" (first bad row raises :class:`TSVFormatError`) or "skip" (bad rows are logged,
    counted in ``skipped`` and described in ``problems``). ``images``: "full" decodes every image, "header"
    only checks it and reads its size (images are then loaded lazily), "none" skips image columns.
    """

    def __init__(self, path: str | os.PathLike, task: str, on_error: str = "raise", images: str = "full"):
        check_task(task)
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: allowed {ON_ERROR}")
        if images not in IMAGE_MODES:
            raise ValueError(f"images={images!r}: allowed {IMAGE_MODES}")
        self.path = _check_path(path)
        self.task, self.on_error, self.images = task, on_error, images
        self.skipped = 0
        self.rows_read = 0
        self.problems: list[str] = []
        self.skip_reasons: Counter[str] = Counter()

    def __iter__(self) -> Iterator[Record]:
        for _, rec in self.scan():
            yield rec

    def scan(self) -> Iterator[tuple[int, Record]]:
        """Yield (byte offset of the line, record) for every good row."""
        self.skipped, self.rows_read = 0, 0
        self.problems.clear()
        self.skip_reasons.clear()
        offset = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                self.rows_read += 1
                rec = self._parse(raw, line_no)
                if rec is not None:
                    yield start, rec
        if self.skipped:
            logger.warning("%s: skipped %d of %d rows (%s)", self.path, self.skipped, self.rows_read, dict(self.skip_reasons))

    def read_at(self, offset: int, line: int) -> Record:
        """Parse the row starting at byte ``offset`` (always raises on a bad row)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            raw = f.readline()
        rec = self._parse(raw, line, force_raise=True)
        assert rec is not None
        return rec

    def _parse(self, raw: bytes, line_no: int, force_raise: bool = False) -> Record | None:
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            return self._fail(line_no, "utf8", f"not valid UTF-8 ({err.reason})", force_raise)
        try:
            return parse_row(self.task, text.split("\t"), line_no, self.images)
        except RowProblem as err:
            return self._fail(line_no, err.kind, str(err), force_raise)

    def _fail(self, line_no: int, kind: str, problem: str, force_raise: bool) -> None:
        if self.on_error == "raise" or force_raise:
            raise TSVFormatError(self.path, line_no, problem)
        self.skipped += 1
        self.skip_reasons[kind] += 1
        msg = f"{self.path}:{line_no}: {problem}"
        if len(self.problems) < 100:
            self.problems.append(msg)
        if self.skipped <= 20:
            logger.warning("skipping row: %s", msg)
        return None


def read_tsv(path: str | os.PathLike, task: str, on_error: str = "raise", images: str = "full") -> TSVReader:
    """A :class:`TSVReader` (iterate it for records; read ``.skipped`` afterwards)."""
    return TSVReader(path, task, on_error=on_error, images=images)


def count_rows(path: str | os.PathLike) -> int:
    """Number of non-blank lines, counted in binary chunks (no parsing)."""
    p = _check_path(path)
    n = 0
    with open(p, "rb") as f:
        for raw in f:
            if raw.strip():
                n += 1
    return n


# ------------------------------------------------------------------ writer


def format_row(task: str, values: Iterable[object]) -> str:
    """Join one row; refuses tabs/newlines inside fields and a wrong column count."""
    vals = [str(v) for v in values]
    layout = LAYOUTS[check_task(task)]
    if len(vals) != len(layout):
        raise ValueError(f"row for {task} has {len(vals)} fields; layout is {layout}")
    for name, v in zip(layout, vals):
        if "\t" in v or "\n" in v or "\r" in v:
            raise ValueError(f"field {name}={v[:40]!r}: tabs and newlines are not allowed in TSV fields")
    return "\t".join(vals)


def write_tsv(path: str | os.PathLike, task: str, rows: Iterable[Iterable[object]]) -> int:
    """Write rows atomically; returns the row count."""
    check_task(task)
    n = 0

    def write(tmp: str) -> None:
        nonlocal n
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(format_row(task, row) + "\n")
                n += 1

    atomic_write(path, write)
    return n
