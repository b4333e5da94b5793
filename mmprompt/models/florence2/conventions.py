"""Florence-2's conventions: location tokens, task prompts, targets, generation defaults, added tokens.

* boxes: 1000 location tokens ``<loc_0>``…``<loc_999>`` per axis; bin = floor(coordinate / (side / 1000))
  (float32) clipped to [0, 999] against the original image size, read back as the bin centre
  (bin + 0.5) · side / 1000 — the quantiser of Florence-2's post-processor; outputs are parsed by the
  processor's phrase-grounding rules (:func:`parse_phrase_grounding`);
* prompts: a task token the processor expands (``<CAPTION>`` → "What does the image describe?",
  ``<CAPTION_TO_PHRASE_GROUNDING>phrase`` → "Locate the phrases in the caption: phrase") or free text;
* phrase grounding is answered "phrase<loc_x0><loc_y0><loc_x1><loc_y1>";
* the decoder starts with ``</s>`` (id 2), the first generated token is forced to ``<s>`` (id 0); targets
  are ``<s>`` + text + ``</s>``; generation defaults are beam 3 and no-repeat-3-gram.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

import torch

from mmprompt.data.boxes import image_sides
from mmprompt.data.tasks import TASKS, MAX_SRC_WORDS, pre_caption, pre_question

NUM_LOC_BINS = 1000
LOC_RE = re.compile(r"<loc_(\d+)>")
GROUNDING_TOKEN = "<CAPTION_TO_PHRASE_GROUNDING>"
CAPTION_TOKEN = "<CAPTION>"
VE_PROMPT = 'Does the image describe "{}"?'
VE_PREMISE_PROMPT = 'Can image and text1 "{}" imply text2 "{}"?'
PAD_ID = 1
DECODER_START_ID = 2
#: Florence-2's generation defaults (its checkpoints' ``generation_config.json``).
GENERATION_DEFAULTS: dict[str, Any] = dict(
    num_beams=3, no_repeat_ngram_size=3, early_stopping=True, decoder_start_token_id=DECODER_START_ID,
    forced_bos_token_id=0, forced_eos_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=PAD_ID,
)
#: Florence-2's added tokens besides ``<loc_i>``: the first four come before the location tokens.
TASK_MARKUP_TOKENS: tuple[str, ...] = (
    "<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>",
    "<grounding>", "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
    "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>",
)
IMAGE_TOKEN = "<image>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def quantize_box(box: Sequence[float], image_size: int | Sequence[float], bins: int = NUM_LOC_BINS) -> list[int]:
    """(x0, y0, x1, y1) pixels of an image of ``image_size`` (int or (w, h)) → Florence-2 location bins."""
    if len(box) != 4:
        raise ValueError(f"box={box!r}: expected four numbers (x0, y0, x1, y1)")
    w, h = image_sides(image_size)
    # float32, a coordinate tensor divided by a Python-float bin width, as the processor computes it (150 px
    # of a 300 px side is bin 499 there, not 500)
    coords = torch.tensor([float(c) for c in box], dtype=torch.float32)
    out = [(coords[i] / (side / bins)).floor().clamp(0, bins - 1) for i, side in enumerate((w, h, w, h))]
    return [int(v) for v in out]


def dequantize_box(loc_bins: Sequence[int], image_size: int | Sequence[float], bins: int = NUM_LOC_BINS) -> list[float]:
    """Four location bins → (x0, y0, x1, y1) pixels at the bin centres."""
    if len(loc_bins) != 4:
        raise ValueError(f"loc_bins={loc_bins!r}: expected four bins")
    w, h = image_sides(image_size)
    return [(b + 0.5) * s / bins for b, s in zip(loc_bins, (w, h, w, h))]


def box_to_loc_tokens(box: Sequence[float], image_size: int | Sequence[float]) -> str:
    """"<loc_a><loc_b><loc_c><loc_d>" for a pixel box (no spaces, as Florence-2 writes them)."""
    return "".join(f"<loc_{b}>" for b in quantize_box(box, image_size))


_SPECIALS = ("<s>", "</s>", "<pad>")
_PHRASE_SEGMENT = re.compile(r"[^<]+(?:<loc_\d+>){4,}")  # text, then at least four location tokens
_BOX = re.compile(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>")


def parse_phrase_grounding(text: str, image_size: int | Sequence[float]) -> list[dict[str, Any]]:
    """Phrase-grounding output read by the rules of Florence-2's processor (``post_process_generation``
    for ``<CAPTION_TO_PHRASE_GROUNDING>``): ``<s>``/``</s>``/``<pad>`` removed; each segment of text followed
    by four or more location tokens is one phrase (its stripped text, which must be non-empty) with one box
    per group of four consecutive location tokens. Returns ``[{"phrase": str, "boxes": [[x0, y0, x1, y1],
    ...]}, ...]`` in pixels of ``image_size``."""
    for special in _SPECIALS:
        text = text.replace(special, "")
    out = []
    for segment in _PHRASE_SEGMENT.findall(text):
        phrase = segment[: segment.index("<loc_")].strip()
        bins = [[int(g) for g in m.groups()] for m in _BOX.finditer(segment)]
        bins = [b for b in bins if max(b) < NUM_LOC_BINS]
        if phrase and bins:
            out.append({"phrase": phrase, "boxes": [dequantize_box(b, image_size) for b in bins]})
    return out


def loc_tokens_to_box(text: str, image_size: int | Sequence[float]) -> list[float] | None:
    """The first box of the first phrase of a grounding output (:func:`parse_phrase_grounding`: a phrase
    followed by four consecutive location tokens), None when there is none."""
    found = parse_phrase_grounding(text, image_size)
    return found[0]["boxes"][0] if found else None


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def grounding_phrase(expression: str, max_words: int = MAX_SRC_WORDS) -> str:
    """The referring expression as prompted and echoed (OFA's caption cleaning)."""
    return pre_caption(expression, max_words)


def task_prompt(task: str, record: Any, *, add_premise: bool = True, max_words: int = MAX_SRC_WORDS) -> str:
    """The Florence-2 prompt of one TSV record (before the processor expands task tokens)."""
    if task == "refcoco":
        return GROUNDING_TOKEN + grounding_phrase(record.text, max_words)
    if task == "caption":
        return CAPTION_TOKEN
    if task == "vqa":
        question = pre_question(record.question, max_words)
        return _sentence(question if question.endswith("?") else question + "?")
    if task == "snli_ve":
        hypothesis = pre_caption(record.hypothesis, max_words)
        if add_premise:
            return VE_PREMISE_PROMPT.format(pre_caption(record.premise, max_words), hypothesis)
        return VE_PROMPT.format(hypothesis)
    raise ValueError(f"task={task!r}: allowed {TASKS}")


def answer_text(text: str) -> str:
    """A generated short answer without surrounding spaces and punctuation."""
    return text.strip().strip(string.punctuation + " ").strip()
