"""Task formatting exactly as OFA does it: instructions, text cleaning, targets, prompt types, answer sets,
and the trie over token ids used for constrained decoding and constraint masks.

Sequences (lists of token ids):

* source ``[bos] + encode(instruction) + [eos]``;
* prompt type ``"none"``: decoder input ``[bos] + target``, labels ``target + [eos]``;
* prompt type ``"prev_output"`` (OFA's default for SNLI-VE and VQA): decoder input
  ``source[:-1] + target``, labels ``decoder_input[1:] + [eos]`` with every position before the answer set
  to ``pad`` (no loss on the copied source). ``prompt_length`` is the number of decoder-input positions that
  belong to the prompt (1 for "none": the bos), so a decoder is primed with ``decoder_input[:prompt_length]``.

Constraint masks (``[T, V]`` booleans, True = allowed next token) are built from the trie for the answer
positions and the final eos; positions without loss (the copied source) are all True, so masking logits with
them never produces an all ``-inf`` row.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from mmprompt.data.boxes import box_to_tokens, scale_box
from mmprompt.data.tokenizer import BOS, EOS, PAD, encode_text

# ------------------------------------------------------------------ instructions (OFA's wording)

CAPTION_INSTRUCTION = " what does the image describe?"
REFCOCO_INSTRUCTION = ' which region does the text " {} " describe?'
VE_INSTRUCTION = ' does the image describe " {} "?'
VE_PREMISE_INSTRUCTION = ' can image and text1 " {} " imply text2 " {} "?'
GROUNDED_CAPTION_INSTRUCTION = " what does the region describe? region: {}"
LISTING_INSTRUCTION = " what are the objects in the image?"
INFILL_INSTRUCTION = ' what is the complete text of " {} "?'
VQA_OBJECT_SUFFIX = " object: {}"



@dataclass(frozen=True)
class TaskSpec:
    """A downstream task: its validation and test splits (as in the paper's tables) and headline metric.
    How each task is formatted (:mod:`mmprompt.data.collate`) and scored (:mod:`mmprompt.eval`) is keyed
    by ``name``; a test checks those tables cover exactly :data:`TASKS`."""

    name: str
    val_split: str
    test_splits: tuple[str, ...]
    metric: str

    @property
    def splits(self) -> tuple[str, ...]:
        return (self.val_split, *self.test_splits)


#: The task registry: the one place the downstream tasks are listed.
TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("refcoco", "val", ("testA", "testB"), "acc@0.5"),
    TaskSpec("snli_ve", "dev", ("test",), "accuracy"),
    TaskSpec("caption", "val", ("test",), "cider"),
    TaskSpec("vqa", "val", ("test",), "accuracy"),
)}
TASKS: tuple[str, ...] = tuple(TASK_SPECS)
PROMPT_TYPES: tuple[str, ...] = ("none", "prev_output")
DEFAULT_PROMPT_TYPE: dict[str, str] = {"refcoco": "none", "snli_ve": "prev_output", "caption": "none", "vqa": "prev_output"}
VE_LABEL_TO_ANSWER: dict[str, str] = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
VE_ANSWERS: tuple[str, ...] = ("no", "yes", "maybe")  # OFA's ans2label order {"no": 0, "yes": 1, "maybe": 2}
MAX_SRC_WORDS = 80
MAX_TGT_WORDS = 20
MAX_OBJECTS = 30
BOX_PLACEHOLDER_RE = re.compile(r"\[\[(-?[\d.]+),(-?[\d.]+),(-?[\d.]+),(-?[\d.]+)\]\]")

# ------------------------------------------------------------------ cleaning


def _clean(text: str, max_words: int) -> str:
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_caption(caption: str, max_words: int = MAX_SRC_WORDS) -> str:
    """OFA's cleaning of caption-like inputs: lowercase, trim leading punctuation, '-' and '/' to spaces,
    collapse whitespace, keep at most ``max_words`` words."""
    return _clean(caption.replace("<person>", "person"), max_words)


def pre_question(question: str, max_words: int = MAX_SRC_WORDS) -> str:
    """OFA's cleaning of questions (as :func:`pre_caption`, without the ``<person>`` rewrite)."""
    return _clean(question, max_words)


_PUNCT = str.maketrans({c: None for c in string.punctuation})


def clean_caption_target(caption: str, max_words: int = MAX_TGT_WORDS) -> str:
    """OFA's caption target: punctuation removed, whitespace collapsed, at most ``max_words`` words."""
    return " ".join(caption.translate(_PUNCT).split()[:max_words])


_NUMBERS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(answer: str) -> str:
    """VQA-style answer normalisation: lowercase, punctuation (except inside numbers) removed, number words
    to digits, articles dropped, whitespace collapsed."""
    a = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    a = re.sub(r"(?<!\d)[.,](?!\d)", " ", a)
    a = a.translate(str.maketrans({c: " " for c in string.punctuation if c not in ".,"}))
    words = [_NUMBERS.get(w, w) for w in a.split() if w not in _ARTICLES]
    return " ".join(words)


# ------------------------------------------------------------------ sources and targets


def caption_source() -> str:
    return CAPTION_INSTRUCTION


def refcoco_source(expression: str, max_words: int = MAX_SRC_WORDS) -> str:
    return REFCOCO_INSTRUCTION.format(pre_caption(expression, max_words))


def snli_ve_source(hypothesis: str, premise: str | None = None, max_words: int = MAX_SRC_WORDS) -> str:
    """The VE instruction; with a premise, OFA's ``--add-caption`` variant."""
    hyp = pre_caption(hypothesis, max_words)
    if premise is None:
        return VE_INSTRUCTION.format(hyp)
    return VE_PREMISE_INSTRUCTION.format(pre_caption(premise, max_words), hyp)


def vqa_source(question: str, objects: Sequence[str] | None = None, max_words: int = MAX_SRC_WORDS) -> str:
    """" " + question (with "?" appended); with ``objects``, OFA's " object: ..." suffix (at most 30)."""
    q = pre_question(question, max_words)
    q = q if q.endswith("?") else q + "?"
    src = " " + q
    if objects:
        src += VQA_OBJECT_SUFFIX.format(" ".join(list(objects)[:MAX_OBJECTS]))
    return src


def refcoco_target(box: Sequence[float], image_size: int | Sequence[float], num_bins: int) -> str:
    """Four bin tokens of ``box`` (pixels of an image of ``image_size``)."""
    return box_to_tokens(box, image_size, num_bins)


def vqa_target_answer(answers: dict[str, float]) -> str:
    """OFA's training answer: the most confident one (first in column order on ties)."""
    best = max(answers.values())
    return next(a for a, c in answers.items() if c == best)


VQA_SCORE_OF_COUNT = {1: 0.3, 2: 0.6, 3: 0.9}


def vqa_confidence(count: int) -> float:
    """VQA's accuracy of an answer given by ``count`` of 10 annotators (averaged over 10 leave-one-out
    subsets): 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.0. OFA's TSV stores this as the answer confidence."""
    return 0.0 if count <= 0 else VQA_SCORE_OF_COUNT.get(count, 1.0)


def _count_of(conf: float) -> int:
    if conf >= 0.95:
        return 4
    return min(3, max(1, round(conf / 0.3)))


def vqa_answer_list(answers: dict[str, float], n: int = 10) -> list[str]:
    """Rebuild the annotators' answer list from OFA's confidences (inverse of :func:`vqa_confidence`).

    Exact when at most one answer has confidence 1.0 (always the case in the synthetic data): that answer
    gets the remaining annotators. Otherwise each 1.0 answer counts 4 and the list may be longer than ``n``;
    a shorter list is padded with "" (which never matches a prediction).
    """
    counts = {a: _count_of(c) for a, c in answers.items()}
    full = [a for a, c in answers.items() if c >= 0.95]
    if len(full) == 1:
        counts[full[0]] = max(4, n - sum(v for a, v in counts.items() if a != full[0]))
    out = [a for a, k in counts.items() for _ in range(k)]
    return out + [""] * max(0, n - len(out))


def fill_box_placeholders(text: str, image_size: int | Sequence[float], num_bins: int) -> str:
    """Replace ``[[x0,y0,x1,y1]]`` pixel boxes (pretraining texts) with four bin tokens."""
    return BOX_PLACEHOLDER_RE.sub(lambda m: box_to_tokens([float(v) for v in m.groups()], image_size, num_bins), text)


def pretrain_source_target(
    subtask: str, source: str, target: str, image_size: int | Sequence[float] | None, num_bins: int
) -> tuple[str, str]:
    """Instruction and target text of a pretraining row; box placeholders become bins relative to
    ``image_size`` (left as placeholders when it is None)."""
    fill = lambda t: fill_box_placeholders(t, image_size, num_bins) if image_size is not None else t  # noqa: E731
    if subtask == "caption":
        return CAPTION_INSTRUCTION, " " + clean_caption_target(target)
    if subtask == "grounding":
        return refcoco_source(source), fill(target)
    if subtask == "grounded_caption":
        return GROUNDED_CAPTION_INSTRUCTION.format(fill(source)), " " + target
    if subtask == "itm":
        return VE_INSTRUCTION.format(pre_caption(source)), " " + target
    if subtask == "vqa":
        return vqa_source(source), " " + target
    if subtask == "listing":
        return LISTING_INSTRUCTION, " " + fill(target)
    if subtask == "infill":
        return INFILL_INSTRUCTION.format(source), " " + target
    raise ValueError(f"subtask={subtask!r}: unknown pretraining sub-task")


# ------------------------------------------------------------------ trie


class Trie:
    """A prefix tree over token-id sequences; each sequence is stored as ``[bos] + ids + [eos]``."""

    def __init__(self, sequences: Iterable[Sequence[int]] = (), bos: int = BOS, eos: int = EOS):
        self.bos, self.eos = bos, eos
        self.root: dict[int, dict] = {}
        self.size = 0
        for seq in sequences:
            self.insert(seq)

    def insert(self, ids: Sequence[int]) -> None:
        node = self.root
        for t in [self.bos, *ids, self.eos]:
            node = node.setdefault(int(t), {})
        self.size += 1

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Allowed next tokens after ``prefix`` (which starts with bos); ``[eos]`` for an unknown prefix."""
        node = self.root
        for t in prefix:
            node = node.get(int(t))
            if node is None:
                return [self.eos]
        return sorted(node) if node else [self.eos]

    def __contains__(self, ids: Sequence[int]) -> bool:
        node = self.root
        for t in [self.bos, *ids, self.eos]:
            node = node.get(int(t))
            if node is None:
                return False
        return True

    def __len__(self) -> int:
        return self.size


def answer_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of an answer as it appears in a target (" " + answer)."""
    return encode_text(tokenizer, " " + answer)


def build_trie(tokenizer, answers: Iterable[str]) -> Trie:
    """The trie of candidate answers (OFA's constraint trie for VE / VQA)."""
    return Trie(answer_ids(tokenizer, a) for a in answers)


def constraint_mask(trie: Trie, labels: Sequence[int], prompt_length: int, vocab_size: int) -> torch.Tensor:
    """``[len(labels), vocab_size]`` booleans: allowed next tokens at each label position.

    Answer positions start at ``prompt_length - 1``; earlier positions (no loss) are all True.
    """
    mask = torch.ones(len(labels), vocab_size, dtype=torch.bool)
    start = prompt_length - 1
    for i in range(start, len(labels)):
        allowed = trie.next_tokens([trie.bos, *labels[start:i]])
        mask[i] = False
        mask[i, allowed] = True
    return mask


# ------------------------------------------------------------------ sequences


@dataclass
class Encoded:
    """One example as token ids (see the module docstring for the layouts)."""

    source: list[int]
    decoder_input: list[int]
    labels: list[int]
    prompt_length: int


def encode_pair(tokenizer, source_text: str, target_text: str, prompt_type: str = "none") -> Encoded:
    """Encode an instruction and its target with OFA's prompt-type layout."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"prompt_type={prompt_type!r}: allowed {PROMPT_TYPES}")
    src = [BOS, *encode_text(tokenizer, source_text), EOS]
    tgt = encode_text(tokenizer, target_text)
    if prompt_type == "none":
        return Encoded(src, [BOS, *tgt], [*tgt, EOS], 1)
    dec = src[:-1] + tgt
    labels = dec[1:] + [EOS]
    n_prompt = len(src) - 2
    labels[:n_prompt] = [PAD] * n_prompt
    return Encoded(src, dec, labels, len(src) - 1)


def scaled_refcoco_ref(box: Sequence[float], orig_size: tuple[int, int], patch_image_size: int) -> dict:
    """The evaluation reference of a refcoco example: the box in ``patch_image_size`` pixels."""
    return {
        "box": scale_box(box, orig_size, patch_image_size),
        "image_size": patch_image_size,
        "orig_box": list(box),
        "orig_size": tuple(orig_size),
    }
