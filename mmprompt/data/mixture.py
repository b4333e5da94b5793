"""The v3 pretraining mixture: every skill a downstream task needs, in pretraining's own phrasing.

World ``v2`` (the first nano checkpoints) pretrained on attribute-only grounding and single-hop attribute
questions; downstream then asked for relations, extremes, size comparisons, counting and existence that
pretraining never showed, and prompt tuning could not add them. World ``v3`` keeps the same scenes, sub-tasks
and instructions but teaches every construction in pretraining:

* grounding of attribute, relational, extreme and size expressions;
* VQA with counting (answer drawn first), existence, relational, extreme and attribute questions;
* image–text matching of captions and of existence / count / attribute / relation statements (yes / no);
* captions, grounded captions, object listing with boxes, text infilling; scenes with up to 6 objects.

The downstream shift stays real but learnable: the eight held-out (shape, colour) pairs never appear in
pretraining; pretraining uses a *subset* of the downstream phrasings (:data:`PRETRAIN_PHRASING`, e.g. "left
of" but never "beneath" or "on the far left"), one question template per kind, and bare answers; downstream
adds the other phrasings, the "maybe" label, the premise instruction and the annotator caption styles.

Examples are a pure function of ``(seed, stream, index)``, so training draws distinct scenes on the fly
(:class:`MixtureStream`) instead of repeating rows of a file, and resumes exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmprompt.data import texts as X
from mmprompt.data.world import (
    COLOR_NAMES,
    HELD_OUT_COMBOS,
    SEEN_COMBOS,
    SHAPES,
    Desc,
    ObjSpec,
    Scene,
    SceneConfig,
    combos_in,
    matching,
    sample_scene,
    scene_rng,
)

WORLD_VERSIONS: tuple[str, ...] = ("v2", "v3")

#: Pretraining's phrasings: a subset of the downstream ones (:data:`mmprompt.data.texts.DOWNSTREAM_PHRASING`).
PRETRAIN_PHRASING = X.Phrasing(
    relations={"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
               "above": ("above",), "below": ("below",)},
    extremes={"left": ("the leftmost {n}",), "right": ("the rightmost {n}",), "above": ("the topmost {n}",),
              "below": ("the lowest {n}",)},
    attribute=("the {}", "{}"),
    size_words=("bigger",),
    size=("the {w} {n}",),
)
GROUNDING_KINDS: tuple[str, ...] = X.REFCOCO_KINDS  # relation, extreme, size, attribute
VQA_KINDS: tuple[str, ...] = ("count", "exists", "relation", "extreme", "attribute")
ITM_KINDS: tuple[str, ...] = ("caption", "exists", "count", "attribute", "relation")


@dataclass(frozen=True)
class MixtureSpec:
    """One distribution of pretraining examples.

    ``objects``: scenes hold ``objects[0]``..``objects[1]`` objects, uniformly. ``subtasks``: (name, weight)
    pairs. ``grounding_kinds`` / ``vqa_kinds`` / ``itm_kinds``: (kind, weight) pairs inside those sub-tasks.
    """

    name: str
    objects: tuple[int, int]
    subtasks: tuple[tuple[str, float], ...]
    grounding_kinds: tuple[tuple[str, float], ...] = (("relation", 0.3), ("extreme", 0.25), ("size", 0.1),
                                                      ("attribute", 0.35))
    vqa_kinds: tuple[tuple[str, float], ...] = (("count", 0.3), ("exists", 0.15), ("relation", 0.2),
                                                ("extreme", 0.15), ("attribute", 0.2))
    itm_kinds: tuple[tuple[str, float], ...] = (("caption", 0.3), ("exists", 0.15), ("count", 0.2),
                                                ("attribute", 0.15), ("relation", 0.2))
    covered_prob: float = 0.1

    def __post_init__(self) -> None:
        lo, hi = self.objects
        if not 1 <= lo <= hi <= 6:
            raise ValueError(f"objects={self.objects!r}: need 1 <= min <= max <= 6")
        for field_name, allowed in (("subtasks", X.PRETRAIN_SUBTASKS), ("grounding_kinds", GROUNDING_KINDS),
                                    ("vqa_kinds", VQA_KINDS), ("itm_kinds", ITM_KINDS)):
            pairs = getattr(self, field_name)
            bad = [k for k, w in pairs if k not in allowed or w < 0]
            if bad or not pairs or sum(w for _, w in pairs) <= 0:
                raise ValueError(f"{field_name}={pairs!r}: need (name, weight >= 0) pairs from {allowed}, "
                                 "with a positive total")

    @property
    def subtask_names(self) -> tuple[str, ...]:
        return tuple(k for k, w in self.subtasks if w > 0)


_FULL = (("listing", 0.15), ("grounding", 0.3), ("grounded_caption", 0.08), ("caption", 0.1), ("vqa", 0.2),
         ("itm", 0.12), ("infill", 0.05))
#: The named mixtures the staged pretraining uses (see ``data/README.md``).
MIXTURES: dict[str, MixtureSpec] = {
    "listing": MixtureSpec("listing", (1, 6), (("listing", 1.0),)),
    "one-object": MixtureSpec("one-object", (1, 1), (("listing", 0.3), ("grounding", 0.2),
                                                     ("grounded_caption", 0.1), ("caption", 0.1), ("vqa", 0.2),
                                                     ("itm", 0.1))),
    "grounding": MixtureSpec("grounding", (2, 4), (("listing", 0.25), ("grounding", 0.5),
                                                   ("grounded_caption", 0.1), ("vqa", 0.15))),
    "full": MixtureSpec("full", (1, 6), _FULL),
    "val": MixtureSpec("val", (1, 6), _FULL),
}


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _weighted(rng: np.random.Generator, pairs: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*pairs)
    p = np.asarray(weights, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _seen(scene: Scene) -> bool:
    return not combos_in(scene) & HELD_OUT_COMBOS


def _scene(rng: np.random.Generator, spec: MixtureSpec, image_size: int, forced: tuple[ObjSpec, ...] = (),
           covered: bool = True) -> Scene | None:
    lo, hi = spec.objects
    n = max(int(rng.integers(lo, hi + 1)), len(forced))
    if n > 6:
        return None
    cfg = SceneConfig(image_size, 1, 6, "seen", spec.covered_prob if covered else 0.0)
    try:
        scene = sample_scene(rng, cfg, n_objects=n, forced=forced)
    except RuntimeError:
        return None
    return scene if _seen(scene) else None


def _seen_desc(rng: np.random.Generator) -> Desc:
    shape, color = SEEN_COMBOS[int(rng.integers(len(SEEN_COMBOS)))]
    return Desc(shape, color)


# ------------------------------------------------------------------ sub-tasks


def grounding_example(rng: np.random.Generator, spec: MixtureSpec, image_size: int):
    """(scene, expression, box placeholder, kind): a referring expression of a drawn kind."""
    kind = _weighted(rng, spec.grounding_kinds)
    for attempt in range(60):
        forced: tuple[ObjSpec, ...] = ()
        if kind != "attribute" and spec.objects[1] >= 2 and rng.random() < 0.6:
            shape = _pick(rng, SHAPES)  # a same-shape pair makes relational / extreme / size phrases needed
            colors = [c for s, c in SEEN_COMBOS if s == shape]
            forced = tuple(ObjSpec(shape, _pick(rng, colors)) for _ in range(2))
        scene = _scene(rng, spec, image_size, forced)
        if scene is None:
            continue
        k = kind if attempt < 40 else "attribute"
        for i in rng.permutation(len(scene.objects)):
            res = X.refcoco_expression(scene, int(i), rng, k, PRETRAIN_PHRASING)
            if res is not None:
                return scene, res[0], X.box_placeholder(scene.objects[int(i)].box), res[1]
    return None


def _count_question(rng: np.random.Generator, spec: MixtureSpec, image_size: int):
    desc = _pick(rng, (Desc(_pick(rng, SHAPES)), _seen_desc(rng), Desc(None, _pick(rng, COLOR_NAMES)), Desc()))
    question = "how many {} are there?".format(X.plural(desc.phrase()))
    if desc == Desc():
        scene = _scene(rng, spec, image_size, covered=False)
        return None if scene is None else (scene, question, str(len(scene.objects)))
    k = int(rng.integers(0, min(3, spec.objects[1]) + 1))
    for _ in range(40):
        forced = tuple(ObjSpec(desc.shape, desc.color) for _ in range(k))
        scene = _scene(rng, spec, image_size, forced, covered=False)
        if scene is not None and len(matching(scene, desc)[0]) == k:
            return scene, question, str(k)
    return None


def _scene_question(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[str, str] | None:
    objs = scene.objects
    if kind == "exists":
        desc = Desc(_pick(rng, objs).shape, _pick(rng, objs).color) if rng.random() < 0.5 else _seen_desc(rng)
        if (desc.shape, desc.color) in HELD_OUT_COMBOS:
            return None
        sure, maybe = matching(scene, desc)
        if maybe:
            return None
        return "is there {}?".format(X.article(desc.phrase())), "yes" if sure else "no"
    if kind == "attribute":
        return X.pretrain_question(scene, rng)
    i = int(rng.integers(len(objs)))
    obj = objs[i]
    if obj.covered:
        return None
    ask = _pick(rng, ("color", "shape"))
    target = Desc(obj.shape) if ask == "color" else Desc(None)
    ph = PRETRAIN_PHRASING
    if kind == "relation":
        for lm in rng.permutation(len(objs)):
            for r in rng.permutation(4):
                rel = ("left", "right", "above", "below")[int(r)]
                if int(lm) != i and X.relational_referent(scene, target, int(lm), rel) == i:
                    lp = X.landmark_phrase(scene, int(lm), rng)
                    if lp:
                        return f"what {ask} is the {target.phrase()} {_pick(rng, ph.relations[rel])} {lp}?", \
                            getattr(obj, ask)
        return None
    for r in rng.permutation(4):
        rel = ("left", "right", "above", "below")[int(r)]
        if X.extreme_referent(scene, target, rel) == i:
            return f"what {ask} is {_pick(rng, ph.extremes[rel]).format(n=target.phrase())}?", getattr(obj, ask)
    return None


def vqa_example(rng: np.random.Generator, spec: MixtureSpec, image_size: int):
    """(scene, question, answer, kind)."""
    kind = _weighted(rng, spec.vqa_kinds)
    for attempt in range(60):
        k = kind if attempt < 40 else "attribute"
        if k == "count":
            res = _count_question(rng, spec, image_size)
            if res is not None:
                return res + (k,)
            continue
        scene = _scene(rng, spec, image_size)
        if scene is None:
            continue
        qa = _scene_question(scene, rng, k)
        if qa is not None:
            return scene, qa[0], qa[1], k
    return None


def _itm_claim(rng: np.random.Generator, kind: str) -> X.VEClaim:
    """A statement with pretraining's phrasing (one template per kind, seen pairs only)."""
    desc = _seen_desc(rng)
    if kind == "exists":
        return X.VEClaim(kind, f"there is {X.article(desc.phrase())}", (desc,))
    if kind == "count":
        n = int(rng.integers(1, 4))
        return X.VEClaim(kind, f"there {'is' if n == 1 else 'are'} {X._count_phrase(n, desc.phrase())}", (desc,), n=n)
    if kind == "attribute":
        return X.VEClaim(kind, f"the {desc.shape} is {desc.color}", (desc,))
    other = _seen_desc(rng)
    while other.shape == desc.shape:
        other = _seen_desc(rng)
    rel = _pick(rng, ("left", "right", "above", "below"))
    return X.VEClaim(kind, f"the {desc.phrase()} is {_pick(rng, PRETRAIN_PHRASING.relations[rel])} the "
                           f"{other.phrase()}", (desc, other), rel=rel)


def itm_example(rng: np.random.Generator, spec: MixtureSpec, image_size: int):
    """(scene, statement, "yes"/"no", kind): label drawn first, then a scene that gives it."""
    kind = _weighted(rng, spec.itm_kinds)
    yes = bool(rng.random() < 0.5)
    if kind == "caption":
        for _ in range(20):
            scene = _scene(rng, spec, image_size)
            if scene is None:
                continue
            text = X.pretrain_caption(scene, rng) if yes else X.corrupt_caption(scene, rng)
            if text:
                return scene, text, "yes" if yes else "no", kind
        return None
    label = "entailment" if yes else "contradiction"
    for attempt in range(200):
        if attempt % 20 == 0:
            claim = _itm_claim(rng, kind)
        forced = X.ve_forced(claim, label, rng)
        if len(forced) > spec.objects[1]:
            continue
        scene = _scene(rng, spec, image_size, forced, covered=False)
        if scene is not None and X.ve_label(scene, claim) == label:
            return scene, claim.text, "yes" if yes else "no", kind
    return None


def _plain_example(rng: np.random.Generator, spec: MixtureSpec, image_size: int, subtask: str):
    for _ in range(60):
        scene = _scene(rng, spec, image_size)
        if scene is None:
            continue
        if subtask == "caption" and len(scene.objects) > 4:  # keep captions within 20 words
            items = [X.article(X.describe(scene.objects[i]).phrase()) for i in X.left_to_right(scene)]
            return scene, "", X.join_list(items), "plain"
        if subtask == "infill":
            made = _infill_text(scene, rng, spec, image_size)
            if made:
                return scene, X.mask_span(made, rng), made, "text"
            continue
        ex = X.pretrain_example(scene, subtask, rng)
        if ex is not None:
            return scene, ex[0], ex[1], "plain"
    return None


def _infill_text(scene: Scene, rng: np.random.Generator, spec: MixtureSpec, image_size: int) -> str | None:
    what = _pick(rng, ("caption", "expression", "question"))
    if what == "caption":
        return X.pretrain_caption(scene, rng) if len(scene.objects) <= 4 else None
    if what == "expression":
        res = X.refcoco_expression(scene, int(rng.integers(len(scene.objects))), rng, None, PRETRAIN_PHRASING)
        return None if res is None else res[0]
    qa = _scene_question(scene, rng, _pick(rng, ("exists", "relation", "extreme", "attribute")))
    return None if qa is None else qa[0]


@dataclass
class MixtureExample:
    """One pretraining example of world v3 before encoding."""

    subtask: str
    source: str
    target: str
    scene: Scene
    kind: str


def mixture_example(spec: MixtureSpec, seed: int, stream: str, index: int, image_size: int = 128) -> MixtureExample:
    """Example ``index`` of ``stream`` (e.g. ``"train/grounding"``) under ``seed``: a pure function."""
    rng = scene_rng(seed, f"pretrain-v3/{stream}", index)
    for _ in range(20):
        subtask = _weighted(rng, spec.subtasks)
        if subtask == "grounding":
            res = grounding_example(rng, spec, image_size)
        elif subtask == "vqa":
            res = vqa_example(rng, spec, image_size)
        elif subtask == "itm":
            res = itm_example(rng, spec, image_size)
        elif subtask in ("listing", "grounded_caption", "caption", "infill"):
            res = _plain_example(rng, spec, image_size, subtask)
        else:  # pragma: no cover - MixtureSpec validates names
            raise ValueError(f"subtask={subtask!r}")
        if res is not None:
            scene, source, target, kind = res
            return MixtureExample(subtask, source, target, scene, kind)
    raise RuntimeError(f"could not build an example of {spec.name} #{index}")  # pragma: no cover


def jpeg_roundtrip(image: Image.Image, quality: int = 85) -> Image.Image:
    """The image as the TSV files store it (JPEG at ``quality``), so streamed and stored rows look alike."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class MixtureStream(Dataset):
    """A map-style dataset of ``length`` distinct on-the-fly examples of a :class:`MixtureSpec`, encoded like
    :class:`mmprompt.data.PretrainDataset` rows (so the same collater and training loop serve both)."""

    def __init__(self, spec: MixtureSpec, tokenizer, patch_image_size: int, length: int, *, seed: int = 0,
                 stream: str = "train", image_size: int = 128, num_bins: int | None = None):
        from mmprompt.data.tokenizer import num_bins_of

        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length={length!r}: must be an int >= 1")
        self.spec, self.tokenizer, self.patch_image_size = spec, tokenizer, patch_image_size
        self.length, self.seed, self.stream, self.image_size = length, seed, f"{stream}/{spec.name}", image_size
        self.num_bins = num_bins_of(tokenizer) if num_bins is None else num_bins
        self.subtasks = spec.subtask_names

    def __len__(self) -> int:
        return self.length

    def example(self, i: int) -> MixtureExample:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} examples")
        return mixture_example(self.spec, self.seed, self.stream, i, self.image_size)

    def __getitem__(self, i: int) -> dict:
        from mmprompt.data.collate import encode_pretrain_item

        ex = self.example(int(i))
        image = None if ex.subtask == "infill" else jpeg_roundtrip(ex.scene.render())
        return encode_pretrain_item(f"{self.stream}-{i}", ex.subtask, ex.source, ex.target, image,
                                    self.tokenizer, self.patch_image_size, self.num_bins)

    def collater(self, samples: list[dict]) -> dict:
        from mmprompt.data.collate import collate_batch

        return collate_batch(samples)


__all__ = [
    "GROUNDING_KINDS",
    "ITM_KINDS",
    "MIXTURES",
    "MixtureExample",
    "MixtureSpec",
    "MixtureStream",
    "PRETRAIN_PHRASING",
    "VQA_KINDS",
    "WORLD_VERSIONS",
    "mixture_example",
]
