"""Texts derived from a scene: the pretraining mixture and the four downstream tasks.

Every generator is a pure function of (scene, rng) and returns plain strings/values; instructions are added
later by :mod:`mmprompt.data.tasks`, exactly as OFA adds them to its TSV fields. Boxes inside pretraining
texts are written as placeholders ``[[x0,y0,x1,y1]]`` in image pixels and become ``<bin_i>`` tokens when an
example is encoded (so the number of bins is a tokenizer choice, not baked into the data).

Pretraining never uses: relational or extreme ("leftmost") expressions, counting/existence/relational
questions, the "maybe" label, or the downstream caption styles. See ``data/README.md`` ("The shift").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mmprompt.data.world import (
    COLOR_NAMES,
    HELD_OUT_COMBOS,
    SHAPES,
    SIZES,
    Desc,
    Obj,
    ObjSpec,
    Scene,
    describe,
    matching,
    minimal_description,
    unique_referent,
    with_objects,
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
REL_MARGIN = 0.08  # fraction of the image side: centres closer than this are neither left nor right
PRETRAIN_SUBTASKS: tuple[str, ...] = ("caption", "grounding", "grounded_caption", "itm", "vqa", "listing", "infill")
VE_LABELS = ("entailment", "contradiction", "neutral")
VQA_ANSWERS: tuple[str, ...] = (
    COLOR_NAMES + SHAPES + SIZES + ("yes", "no") + tuple(str(i) for i in range(7))
)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x")) else "s")


def join_list(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def left_to_right(scene: Scene) -> list[int]:
    return sorted(range(len(scene.objects)), key=lambda i: (scene.objects[i].box[0], scene.objects[i].box[1]))


def box_placeholder(box: tuple[int, int, int, int]) -> str:
    return "[[{},{},{},{}]]".format(*box)


def full_phrase(obj: Obj) -> str:
    """"small red circle" / "large covered star"."""
    return describe(obj, color=True, size=True).phrase()


# ------------------------------------------------------------------ relations


def relation_holds(a: Obj, b: Obj, rel: str, image_size: int) -> bool | None:
    """Whether ``a`` is ``rel`` of ``b`` (left/right/above/below); None inside the ambiguous margin."""
    m = REL_MARGIN * image_size
    d = {"left": b.cx - a.cx, "right": a.cx - b.cx, "above": b.cy - a.cy, "below": a.cy - b.cy}[rel]
    if abs(d) < m:
        return None
    return d > 0


REL_PHRASES = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
EXTREME_PHRASES = {
    "left": ("the leftmost {n}", "the {n} on the far left", "the {n} furthest to the left"),
    "right": ("the rightmost {n}", "the {n} on the far right", "the {n} furthest to the right"),
    "above": ("the topmost {n}", "the {n} at the top", "the highest {n}"),
    "below": ("the lowest {n}", "the {n} at the bottom", "the bottom {n}"),
}


def extreme_referent(scene: Scene, desc: Desc, direction: str) -> int | None:
    """The object matching ``desc`` that is clearly the most ``direction`` one (needs >= 2 candidates)."""
    sure, maybe = matching(scene, desc)
    if len(sure) < 2 or maybe:
        return None
    key = {"left": lambda o: o.cx, "right": lambda o: -o.cx, "above": lambda o: o.cy, "below": lambda o: -o.cy}
    ranked = sorted(sure, key=lambda i: key[direction](scene.objects[i]))
    k0, k1 = (key[direction](scene.objects[i]) for i in ranked[:2])
    return ranked[0] if k1 - k0 >= REL_MARGIN * scene.image_size else None


def relational_referent(scene: Scene, target: Desc, landmark: int, rel: str) -> int | None:
    """The single object matching ``target`` that is ``rel`` of object ``landmark`` (>= 2 candidates)."""
    sure, maybe = matching(scene, target)
    cands = [i for i in sure if i != landmark]
    if len(cands) < 2 or [i for i in maybe if i != landmark]:
        return None
    lm = scene.objects[landmark]
    verdicts = [relation_holds(scene.objects[i], lm, rel, scene.image_size) for i in cands]
    if any(v is None for v in verdicts):
        return None
    hits = [i for i, v in zip(cands, verdicts) if v]
    return hits[0] if len(hits) == 1 else None


def landmark_phrase(scene: Scene, index: int, rng: np.random.Generator) -> str | None:
    desc = describe(scene.objects[index], color=True, size=False)
    if unique_referent(scene, desc) != index:
        desc = minimal_description(scene, index, rng)
    return None if desc is None else "the " + desc.phrase()


# ------------------------------------------------------------------ pretraining texts


def pretrain_caption(scene: Scene, rng: np.random.Generator) -> str:
    """"a red circle and a small blue square" (objects left to right), several phrasings."""
    with_size = bool(rng.random() < 0.5)
    items = [article(describe(scene.objects[i], True, with_size).phrase()) for i in left_to_right(scene)]
    return _pick(rng, ("{}", "an image of {}", "a picture of {}")).format(join_list(items))


def pretrain_expression(scene: Scene, index: int, rng: np.random.Generator) -> str | None:
    """An attribute-only referring expression for object ``index`` (minimal or fully specified)."""
    obj = scene.objects[index]
    desc = describe(obj, color=True, size=bool(rng.random() < 0.3)) if rng.random() < 0.5 else None
    if desc is None or unique_referent(scene, desc) != index:
        desc = minimal_description(scene, index, rng)
    if desc is None:
        return None
    return _pick(rng, ("the {}", "{}", "the {} in the image")).format(desc.phrase())


def pretrain_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """A single-hop attribute question about a uniquely described object: (question, answer)."""
    order = rng.permutation(len(scene.objects))
    for i in order:
        obj = scene.objects[int(i)]
        kind = _pick(rng, ("color", "shape", "size"))
        if obj.covered:
            kind = "size" if kind == "color" else kind
        if kind == "color":
            d = Desc(obj.shape, size=obj.size if rng.random() < 0.3 else None)
            if unique_referent(scene, d) == int(i):
                q = _pick(rng, ("what color is the {}?", "what is the color of the {}?", "which color has the {}?"))
                return q.format(d.phrase()), obj.color
        elif kind == "shape":
            d = describe(obj, color=True, size=False)
            d = Desc(None, d.color, None, d.covered)
            if unique_referent(scene, d) == int(i):
                q = _pick(rng, ("what shape is the {}?", "what is the {}?", "which shape does the {} have?"))
                return q.format(d.phrase()), obj.shape
        else:
            d = describe(obj, color=True, size=False)
            if unique_referent(scene, d) == int(i):
                q = _pick(rng, ("what size is the {}?", "is the {} small or large?"))
                return q.format(d.phrase()), obj.size
    return None


def corrupt_caption(scene: Scene, rng: np.random.Generator) -> str | None:
    """A pretraining-style caption with one visible object's colour or shape changed to something absent."""
    visible = [i for i, o in enumerate(scene.objects) if not o.covered]
    if not visible:
        return None
    i = int(_pick(rng, visible))
    obj = scene.objects[i]
    for _ in range(20):
        if rng.random() < 0.5:
            new = Obj(obj.shape, _pick(rng, COLOR_NAMES), obj.size, obj.box)
        else:
            new = Obj(_pick(rng, SHAPES), obj.color, obj.size, obj.box)
        sure, maybe = matching(scene, Desc(new.shape, new.color))
        if not sure and not maybe and (new.shape, new.color) not in HELD_OUT_COMBOS:
            objects = tuple(new if k == i else o for k, o in enumerate(scene.objects))
            return pretrain_caption(with_objects(scene, objects), rng)
    return None


def listing_target(scene: Scene) -> str:
    """"small red circle [[x0,y0,x1,y1]] large blue square [[...]]" (left to right)."""
    return " ".join(f"{full_phrase(scene.objects[i])} {box_placeholder(scene.objects[i].box)}" for i in left_to_right(scene))


_LISTED = re.compile(r"(\w+) (\w+) (\w+)\s*<bin_(\d+)>\s*<bin_(\d+)>\s*<bin_(\d+)>\s*<bin_(\d+)>")


def parse_listing(text: str) -> list[dict]:
    """The objects of an encoded listing (``"small red circle <bin_1> <bin_2> <bin_9> <bin_9> …"``, boxes as
    bin tokens): ``[{"size", "colour", "shape", "box": [4 bin indices]}, …]``; malformed parts are skipped."""
    return [{"size": m[1], "colour": m[2], "shape": m[3], "box": [int(b) for b in m.groups()[3:]]}
            for m in _LISTED.finditer(text)]


def mask_span(text: str, rng: np.random.Generator) -> str:
    """Replace 1–3 consecutive words with one ``<mask>``."""
    words = text.split()
    n = int(rng.integers(1, min(3, len(words)) + 1))
    start = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[:start] + ["<mask>"] + words[start + n :])


def pretrain_example(scene: Scene, subtask: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """(source_text, target_text) for one pretraining sub-task, or None when the scene does not allow it."""
    n = len(scene.objects)
    if subtask == "caption":
        return "", pretrain_caption(scene, rng)
    if subtask == "listing":
        return "", listing_target(scene)
    if subtask == "grounding":
        i = int(rng.integers(n))
        expr = pretrain_expression(scene, i, rng)
        return None if expr is None else (expr, box_placeholder(scene.objects[i].box))
    if subtask == "grounded_caption":
        i = int(rng.integers(n))
        return box_placeholder(scene.objects[i].box), full_phrase(scene.objects[i])
    if subtask == "itm":
        if rng.random() < 0.5:
            return pretrain_caption(scene, rng), "yes"
        text = corrupt_caption(scene, rng)
        return None if text is None else (text, "no")
    if subtask == "vqa":
        return pretrain_question(scene, rng)
    if subtask == "infill":
        kind = _pick(rng, ("caption", "expression", "question"))
        if kind == "caption":
            text = pretrain_caption(scene, rng)
        elif kind == "expression":
            text = pretrain_expression(scene, int(rng.integers(n)), rng)
        else:
            qa = pretrain_question(scene, rng)
            text = None if qa is None else qa[0]
        return None if not text else (mask_span(text, rng), text)
    raise ValueError(f"subtask={subtask!r}: allowed {PRETRAIN_SUBTASKS}")


# ------------------------------------------------------------------ refcoco


REFCOCO_KINDS: tuple[str, ...] = ("relation", "extreme", "size", "attribute")
REFCOCO_KIND_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.1, 0.2)


@dataclass(frozen=True)
class Phrasing:
    """The surface forms of referring expressions: the downstream set (:data:`DOWNSTREAM_PHRASING`) or
    pretraining's own subset (:data:`mmprompt.data.mixture.PRETRAIN_PHRASING`)."""

    relations: dict
    extremes: dict
    attribute: tuple[str, ...]
    size_words: tuple[str, ...]
    size: tuple[str, ...]


def refcoco_expression(
    scene: Scene, index: int, rng: np.random.Generator, kind: str | None = None, phrasing: "Phrasing | None" = None
) -> tuple[str, str] | None:
    """(expression, kind) uniquely identifying object ``index``; kinds relation/extreme/size/attribute.
    With ``kind`` only that kind is tried; otherwise kinds are tried in a weighted random order.
    ``phrasing`` picks the surface forms (default: the downstream ones)."""
    ph = phrasing or DOWNSTREAM_PHRASING
    if kind is not None:
        expr = _REFCOCO_MAKERS[kind](scene, index, rng, ph)
        return (expr, kind) if expr else None
    order = rng.choice(len(REFCOCO_KINDS), size=len(REFCOCO_KINDS), replace=False, p=np.asarray(REFCOCO_KIND_WEIGHTS))
    for k in order:
        expr = _REFCOCO_MAKERS[REFCOCO_KINDS[int(k)]](scene, index, rng, ph)
        if expr:
            return expr, REFCOCO_KINDS[int(k)]
    return None


def _ref_attribute(scene: Scene, index: int, rng: np.random.Generator, ph: Phrasing) -> str | None:
    desc = minimal_description(scene, index, rng)
    if desc is None:
        return None
    return _pick(rng, ph.attribute).format(desc.phrase())


def _ref_extreme(scene: Scene, index: int, rng: np.random.Generator, ph: Phrasing) -> str | None:
    obj = scene.objects[index]
    classes = [Desc(obj.shape), Desc(None), describe(obj, True, False)]
    for ci in rng.permutation(len(classes)):
        desc = classes[int(ci)]
        if desc.covered:
            continue
        for direction in rng.permutation(4):
            rel = ("left", "right", "above", "below")[int(direction)]
            if extreme_referent(scene, desc, rel) == index:
                return _pick(rng, ph.extremes[rel]).format(n=desc.phrase())
    return None


def _ref_relation(scene: Scene, index: int, rng: np.random.Generator, ph: Phrasing) -> str | None:
    obj = scene.objects[index]
    for target in (Desc(obj.shape), Desc(None)):
        for lm in rng.permutation(len(scene.objects)):
            lm = int(lm)
            if lm == index:
                continue
            for r in rng.permutation(4):
                rel = ("left", "right", "above", "below")[int(r)]
                if relational_referent(scene, target, lm, rel) == index:
                    lp = landmark_phrase(scene, lm, rng)
                    if lp:
                        return f"the {target.phrase()} {_pick(rng, ph.relations[rel])} {lp}"
    return None


def _ref_size(scene: Scene, index: int, rng: np.random.Generator, ph: Phrasing) -> str | None:
    obj = scene.objects[index]
    for desc in (Desc(obj.shape), describe(obj, True, False)):
        sure, maybe = matching(scene, desc)
        if len(sure) == 2 and not maybe and index in sure:
            other = scene.objects[sure[0] if sure[1] == index else sure[1]]
            if other.size != obj.size:
                word = _pick(rng, ph.size_words) if obj.size == "large" else "smaller"
                return _pick(rng, ph.size).format(
                    w=word, n=desc.phrase(), ns=plural(desc.phrase())
                )
    return None


DOWNSTREAM_PHRASING = Phrasing(
    relations=REL_PHRASES, extremes=EXTREME_PHRASES, attribute=("the {}", "{}", "the {} in the picture"),
    size_words=("bigger", "larger"), size=("the {w} {n}", "the {w} of the two {ns}"),
)

_REFCOCO_MAKERS = {
    "attribute": _ref_attribute,
    "extreme": _ref_extreme,
    "relation": _ref_relation,
    "size": _ref_size,
}


# ------------------------------------------------------------------ snli_ve


def _count_phrase(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural(noun)}"


@dataclass(frozen=True)
class VEClaim:
    """A hypothesis chosen before its scene, so its words carry no hint of the label.

    ``kind``: "exists" ("there is a red circle"), "count" ("there are two red circles"), "attribute"
    ("the circle is red": the scene's only circle) or "relation" ("the red circle is left of the blue star").
    """

    kind: str
    text: str
    descs: tuple[Desc, ...]
    n: int = 0
    rel: str = ""


VE_KINDS = ("exists", "count", "attribute", "relation")


def ve_claim(rng: np.random.Generator) -> VEClaim:
    """A random hypothesis, independent of any scene (and so of its label)."""
    kind = _pick(rng, VE_KINDS)
    shape, color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
    if kind == "exists":
        desc = Desc(shape, color, _pick(rng, SIZES) if rng.random() < 0.2 else None)
        text = _pick(rng, ("there is {}", "the image contains {}", "{} is in the picture")).format(article(desc.phrase()))
        return VEClaim(kind, text, (desc,))
    if kind == "count":
        desc, n = Desc(shape, color), int(rng.integers(1, 4))
        text = _pick(rng, ("there {v} {c}", "there {v} exactly {c}", "the picture shows {c}")).format(
            v="is" if n == 1 else "are", c=_count_phrase(n, desc.phrase())
        )
        return VEClaim(kind, text, (desc,), n=n)
    if kind == "attribute":
        text = _pick(rng, ("the {s} is {c}", "the {s} in the image is {c}", "the color of the {s} is {c}"))
        return VEClaim(kind, text.format(s=shape, c=color), (Desc(shape, color),))
    other = _pick(rng, [s for s in SHAPES if s != shape])
    da, db = Desc(shape, color), Desc(other, _pick(rng, COLOR_NAMES))
    rel = _pick(rng, ("left", "right", "above", "below"))
    return VEClaim(kind, f"the {da.phrase()} is {_pick(rng, REL_PHRASES[rel])} the {db.phrase()}", (da, db), rel=rel)


def ve_label(scene: Scene, claim: VEClaim) -> str | None:
    """The label of ``claim`` in ``scene``; None when the scene leaves the claim ill-posed (e.g. two
    circles for "the circle is red"). Neutral means only a covered (colourless) object could decide it."""
    desc = claim.descs[0]
    sure, maybe = matching(scene, desc)
    if claim.kind == "exists":
        return "entailment" if sure else ("neutral" if maybe else "contradiction")
    if claim.kind == "count":
        if not maybe:
            return "entailment" if claim.n == len(sure) else "contradiction"
        return "neutral" if len(sure) <= claim.n <= len(sure) + len(maybe) else "contradiction"
    same_shape = matching(scene, Desc(desc.shape))[0]
    if len(same_shape) != 1:
        return None
    obj = scene.objects[same_shape[0]]
    if claim.kind == "attribute":
        return "neutral" if obj.covered else ("entailment" if obj.color == desc.color else "contradiction")
    b = unique_referent(scene, claim.descs[1])
    if b is None or (not obj.covered and obj.color != desc.color):
        return None
    if obj.covered:
        return "neutral"
    holds = relation_holds(obj, scene.objects[b], claim.rel, scene.image_size)
    return None if holds is None else ("entailment" if holds else "contradiction")


def _as_spec(desc: Desc, covered: bool = False) -> ObjSpec:
    return ObjSpec(desc.shape, None if covered else desc.color, desc.size, covered=covered)


def _other_color(desc: Desc, rng: np.random.Generator) -> Desc:
    return Desc(desc.shape, _pick(rng, [c for c in COLOR_NAMES if c != desc.color]), desc.size)


def ve_forced(claim: VEClaim, label: str, rng: np.random.Generator) -> tuple[ObjSpec, ...]:
    """Objects to place so that a sampled scene likely gives ``claim`` the wanted ``label``
    (:func:`ve_label` has the last word)."""
    desc = claim.descs[0]
    if claim.kind == "count":
        n = claim.n
        if label == "neutral":
            return (_as_spec(desc),) * (n - 1) + (_as_spec(desc, covered=True),)
        k = n if label == "entailment" else _pick(rng, [m for m in (n - 1, n + 1) if m >= 0])
        return (_as_spec(desc),) * k
    if label == "neutral":
        first = _as_spec(desc, covered=True)
    elif label == "entailment" or claim.kind == "relation":
        first = _as_spec(desc)
    elif claim.kind == "attribute":
        first = _as_spec(_other_color(desc, rng))
    else:
        return ()
    return (first,) + tuple(_as_spec(d) for d in claim.descs[1:])


def ve_premise(scene: Scene, claim: VEClaim, rng: np.random.Generator) -> str:
    """A caption-like premise naming one object the hypothesis does not talk about (so the text alone
    cannot settle the label)."""
    shapes = {d.shape for d in claim.descs}
    others = [o for o in scene.objects if o.shape not in shapes]
    if not others:
        return "a picture of some shapes"
    phrase = article(describe(_pick(rng, others), True, bool(rng.random() < 0.3)).phrase())
    return _pick(rng, ("{} and other shapes", "one of the shapes is {}", "a picture with {} among other shapes")).format(phrase)


# ------------------------------------------------------------------ caption


def _position_word(obj: Obj, image_size: int) -> str:
    t = obj.cx / image_size
    return "on the left" if t < 1 / 3 else ("in the middle" if t < 2 / 3 else "on the right")


def _shown(scene: Scene, k: int) -> tuple[list[Obj], int]:
    """The ``k`` largest objects (left to right) and how many are left out."""
    order = left_to_right(scene)
    if len(order) <= k:
        return [scene.objects[i] for i in order], 0
    keep = sorted(sorted(order, key=lambda i: -scene.objects[i].area)[:k], key=order.index)
    return [scene.objects[i] for i in keep], len(order) - k


def downstream_captions(scene: Scene, rng: np.random.Generator, n_refs: int = 5) -> list[str]:
    """``n_refs`` reference captions, each in a different annotator style (none is the pretraining style).
    Every caption has at most 20 words (OFA's target length): long scenes mention the largest objects and
    "k other shapes"."""
    objs = [scene.objects[i] for i in left_to_right(scene)]
    n = len(objs)

    def listed(k: int, fmt) -> str:
        shown, rest = _shown(scene, k)
        parts = [fmt(o) for o in shown]
        if rest:
            parts.append(_count_phrase(rest, "other shape"))
        return join_list(parts)

    def counted() -> str:
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.shape] = counts.get(o.shape, 0) + 1
        parts = [article(s) if k == 1 else _count_phrase(k, s) for s, k in counts.items()]
        return join_list(parts)

    big = [o for o in objs if o.size == "large"]
    with_size = bool(rng.random() < 0.5)
    styles = [
        lambda: f"{_count_phrase(n, 'shape')}: " + listed(3, lambda o: article(describe(o, True, with_size).phrase())),
        lambda: listed(3 if n <= 3 else 2, lambda o: f"{article(describe(o).phrase())} {_position_word(o, scene.image_size)}"),
        lambda: f"{counted()} on a {_pick(rng, ('light', 'plain', 'noisy'))} background",
        lambda: (
            f"a large {describe(big[0]).phrase()} and {_count_phrase(n - 1, 'other shape')}"
            if big and n > 1
            else f"some {_pick(rng, ('small', 'simple', 'colorful'))} shapes: {counted()}"
        ),
        lambda: f"there {'is' if n == 1 else 'are'} "
        + listed(3 if n <= 3 else 2, lambda o: article(describe(o, True, True).phrase()))
        + " in the picture",
    ]
    order = rng.permutation(len(styles))
    return [styles[int(order[k % len(styles)])]() for k in range(n_refs)]


# ------------------------------------------------------------------ vqa


CONFUSIONS = {
    "red": ("orange", "pink"),
    "orange": ("red", "yellow"),
    "yellow": ("orange", "green"),
    "green": ("cyan", "yellow"),
    "cyan": ("blue", "green"),
    "blue": ("cyan", "purple"),
    "purple": ("pink", "blue"),
    "pink": ("purple", "red"),
    "small": ("large",),
    "large": ("small",),
    "yes": ("no",),
    "no": ("yes",),
}


def _confusable(answer: str) -> tuple[str, ...]:
    if answer in CONFUSIONS:
        return CONFUSIONS[answer]
    if answer.isdigit():
        k = int(answer)
        return tuple(str(v) for v in (k - 1, k + 1) if 0 <= v <= 6)
    return tuple(s for s in SHAPES if s != answer)


def annotator_answers(answer: str, rng: np.random.Generator, n: int = 10) -> list[str]:
    """``n`` annotator answers: the right one 4–10 times, confusions at most 3 times each (so exactly one
    answer reaches 4 — which keeps the 10 answers recoverable from OFA's confidence column)."""
    majority = int(rng.choice([10, 9, 8, 7, 6, 5, 4], p=[0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05]))
    others = list(_confusable(answer))
    counts = {a: 0 for a in others}
    for _ in range(n - majority):
        free = [a for a in others if counts[a] < 3]
        if not free:
            majority += 1
            continue
        counts[_pick(rng, free)] += 1
    out = [answer] * majority + [a for a in others for _ in range(counts[a])]
    return [out[int(k)] for k in rng.permutation(len(out))]


VQA_KINDS = ("count", "count", "exists", "relation", "relation", "extreme", "attribute")  # drawn uniformly
COUNT_ANSWERS = (0, 1, 2, 3)  # a count question about some objects has each of these answers equally often


def vqa_kind(rng: np.random.Generator) -> str:
    """The kind of the next question: one of :data:`VQA_KINDS`."""
    return _pick(rng, VQA_KINDS)


def vqa_count_desc(rng: np.random.Generator) -> Desc:
    """What a count question asks about, drawn before its scene so that its answer can be drawn uniformly
    too (the split's generator then places that many matching objects); ``Desc()`` asks for every object."""
    shape, color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
    # a shape alone twice as often as the others (the mix of the first generator)
    return _pick(rng, (Desc(shape), Desc(shape, color), Desc(None, color), Desc(shape), Desc()))


def vqa_count_question(desc: Desc, rng: np.random.Generator) -> str:
    q = _pick(rng, ("how many {} are there?", "how many {} are in the picture?", "how many {} can you see?"))
    return q.format(plural(desc.phrase()))


def vqa_question(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[str, str, str] | None:
    """(question, answer, kind) about ``scene`` for the kinds exists/relation/extreme/attribute, or None when
    the scene does not support the question drawn (count questions are drawn answer first, see
    :func:`vqa_count_desc`)."""
    if kind not in set(VQA_KINDS) - {"count"}:
        raise ValueError(f"kind={kind!r}: allowed {sorted(set(VQA_KINDS) - {'count'})}")
    objs = scene.objects
    if kind == "exists":
        if rng.random() < 0.5:
            o = _pick(rng, objs)
            desc = Desc(o.shape, o.color)
        else:
            desc = Desc(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES))
        q = _pick(rng, ("is there {}?", "are there any {}?", "does the picture contain {}?"))
        arg = plural(desc.phrase()) if q.startswith("are") else article(desc.phrase())
        return q.format(arg), "yes" if matching(scene, desc)[0] else "no", kind
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    ask = _pick(rng, ("color", "shape"))
    if kind == "relation":
        target = Desc(obj.shape) if ask == "color" else Desc(None)
        for lm in rng.permutation(len(objs)):
            for r in rng.permutation(4):
                rel = ("left", "right", "above", "below")[int(r)]
                if int(lm) != i and relational_referent(scene, target, int(lm), rel) == i:
                    lp = landmark_phrase(scene, int(lm), rng)
                    if lp:
                        subject = f"the {target.phrase()} {_pick(rng, REL_PHRASES[rel])} {lp}"
                        return f"what {ask} is {subject}?", getattr(obj, ask), kind
        return None
    if kind == "extreme":
        target = Desc(obj.shape) if ask == "color" else Desc(None)
        for r in rng.permutation(4):
            rel = ("left", "right", "above", "below")[int(r)]
            if extreme_referent(scene, target, rel) == i:
                subject = _pick(rng, EXTREME_PHRASES[rel]).format(n=target.phrase())
                return f"what {ask} is {subject}?", getattr(obj, ask), kind
        return None
    qa = pretrain_question(scene, rng)
    return None if qa is None else (qa[0], qa[1], kind)
