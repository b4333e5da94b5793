"""Generate the synthetic corpus: pretraining mixture + four downstream tasks, as OFA-layout TSV files.

    python -m mmprompt.data.synth --out data/synthetic --profile ci [--seed 0] [--image-size 128]

writes ``data/synthetic/ci/`` (the directory name carries the seed and image size when they are not the
defaults, see :func:`dataset_name`)::

    pretrain_{train,val}.tsv  refcoco_{train,val,testA,testB}.tsv  snli_ve_{train,dev,test}.tsv
    caption_{train,val,test}.tsv  vqa_{train,val,test}.tsv  trainval_ans2label.json
    tokenizer/  (the nano BPE tokenizer, identical for every profile and seed)  manifest.json

Same seed and image size => byte-identical files. Every item is drawn from its own generator
(:func:`mmprompt.data.world.scene_rng`), so the order of generation does not matter. The directory is
built under a temporary name and renamed into place when complete, so an aborted or concurrent run never
leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from mmprompt.core.progress import progress_bar

from mmprompt.core import env as env_names
from mmprompt.core.atomic import replace_dir, temp_dir_for, write_json
from mmprompt.data import tasks as T
from mmprompt.data.texts import (
    COUNT_ANSWERS,
    PRETRAIN_SUBTASKS,
    REFCOCO_KIND_WEIGHTS,
    REFCOCO_KINDS,
    VE_LABELS,
    VQA_ANSWERS,
    annotator_answers,
    downstream_captions,
    left_to_right,
    pretrain_example,
    refcoco_expression,
    ve_claim,
    ve_forced,
    ve_label,
    ve_premise,
    vqa_count_desc,
    vqa_count_question,
    vqa_kind,
    vqa_question,
)
from mmprompt.data.tokenizer import train_nano_tokenizer
from mmprompt.data.tsv import encode_image, write_tsv
from mmprompt.data.world import (
    COLOR_NAMES,
    HELD_OUT_COMBOS,
    SEEN_COMBOS,
    Desc,
    ObjSpec,
    Scene,
    SceneConfig,
    matching,
    sample_scene,
    scene_rng,
)

logger = logging.getLogger(__name__)

SPLITS: dict[str, tuple[str, ...]] = {
    "pretrain": ("train", "val"),
    "refcoco": ("train", "val", "testA", "testB"),
    "snli_ve": ("train", "dev", "test"),
    "caption": ("train", "val", "test"),
    "vqa": ("train", "val", "test"),
}
DEFAULT_SEED = 0
DEFAULT_IMAGE_SIZE = 128
TOKENIZER_DIR = "tokenizer"
ANSWER_FILE = "trainval_ans2label.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # world v2: bump whenever generated content changes (ensure_synthetic then regenerates)
#: Generator version per world (see :mod:`mmprompt.data.mixture`); v2 directories keep their manifests.
FORMAT_VERSIONS: dict[str, int] = {"v2": FORMAT_VERSION, "v3": 1}
DEFAULT_WORLD = "v2"  # becomes "v3" when the v3 checkpoints ship
#: World v3's pretraining files: a validation split for probes and a small train sample for inspection —
#: pretraining itself draws distinct examples on the fly (:class:`mmprompt.data.mixture.MixtureStream`).
V3_PRETRAIN_ROWS: dict[str, dict[str, int]] = {"ci": {"train": 600, "val": 200}, "cpu": {"train": 2000, "val": 2000}}


@dataclass(frozen=True)
class WorldSettings:
    """Generation knobs shared by every profile (change them to change the world)."""

    jpeg_quality: int = 85
    pretrain_max_objects: int = 4
    pretrain_object_weights: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2)  # P(n objects = 1, 2, ...)
    pretrain_covered_prob: float = 0.1
    subtask_weights: tuple[tuple[str, float], ...] = (
        ("listing", 0.2),
        ("grounding", 0.25),
        ("grounded_caption", 0.1),
        ("caption", 0.15),
        ("vqa", 0.15),
        ("itm", 0.1),
        ("infill", 0.05),
    )
    refcoco_objects: tuple[int, int] = (3, 6)
    refcoco_held_out_fraction: float = 0.5  # of train/val referents; testA 0, testB 1
    refcoco_same_shape_distractor: float = 0.6
    ve_objects: tuple[int, int] = (2, 5)
    ve_covered_prob: float = 0.6
    caption_objects: tuple[int, int] = (2, 6)
    caption_covered_prob: float = 0.2
    vqa_objects: tuple[int, int] = (2, 6)
    tokenizer_vocab_size: int = 1000
    tokenizer_num_bins: int = 64

    def __post_init__(self) -> None:
        if len(self.pretrain_object_weights) != self.pretrain_max_objects:
            raise ValueError(
                f"pretrain_object_weights={self.pretrain_object_weights!r}: need one weight per object count "
                f"1..{self.pretrain_max_objects}"
            )
        bad = [s for s, _ in self.subtask_weights if s not in PRETRAIN_SUBTASKS]
        if bad:
            raise ValueError(f"subtask_weights: unknown sub-tasks {bad}; allowed {PRETRAIN_SUBTASKS}")


@dataclass(frozen=True)
class Profile:
    """Number of examples per task and split."""

    name: str
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def total(self) -> int:
        return sum(n for splits in self.sizes.values() for n in splits.values())


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        "ci",
        {
            "pretrain": {"train": 600, "val": 100},
            "refcoco": {"train": 200, "val": 100, "testA": 100, "testB": 100},
            "snli_ve": {"train": 200, "dev": 100, "test": 100},
            "caption": {"train": 200, "val": 100, "test": 100},
            "vqa": {"train": 200, "val": 100, "test": 100},
        },
    ),
    "cpu": Profile(
        "cpu",
        {
            "pretrain": {"train": 150000, "val": 1000},
            "refcoco": {"train": 4000, "val": 500, "testA": 500, "testB": 500},
            "snli_ve": {"train": 4000, "dev": 500, "test": 500},
            "caption": {"train": 3000, "val": 500, "test": 500},
            "vqa": {"train": 4000, "val": 500, "test": 500},
        },
    ),
}


def dataset_name(profile: str, seed: int = DEFAULT_SEED, image_size: int = DEFAULT_IMAGE_SIZE,
                 world: str = DEFAULT_WORLD) -> str:
    """"ci" for the defaults, else e.g. "ci-seed3-64px"; world v3 adds "-v3" ("cpu-v3")."""
    _check_world(world)
    base = profile if seed == DEFAULT_SEED and image_size == DEFAULT_IMAGE_SIZE else f"{profile}-seed{seed}-{image_size}px"
    return base if world == "v2" else f"{base}-{world}"


def split_path(data_dir: str | os.PathLike, task: str, split: str) -> Path:
    """Path of one split's TSV file in a generated directory (validated names)."""
    if task not in SPLITS:
        raise ValueError(f"task={task!r}: allowed {tuple(SPLITS)}")
    if split not in SPLITS[task]:
        raise ValueError(f"split={split!r}: allowed for {task}: {SPLITS[task]}")
    return Path(data_dir) / f"{task}_{split}.tsv"


def _check_world(world: str) -> str:
    if world not in FORMAT_VERSIONS:
        raise ValueError(f"world={world!r}: allowed {tuple(FORMAT_VERSIONS)}")
    return world


def world_profile(profile: str, world: str) -> Profile:
    """The split sizes of ``profile`` in ``world`` (v3 writes fewer pretraining rows: it streams them)."""
    prof = PROFILES[profile]
    if _check_world(world) == "v2":
        return prof
    return Profile(prof.name, {**prof.sizes, "pretrain": dict(V3_PRETRAIN_ROWS[profile])})


def _check_args(profile: str, seed: int, image_size: int, max_per_split: int | None) -> Profile:
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: allowed {tuple(PROFILES)}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an int >= 0")
    if not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise ValueError(f"image_size={image_size!r}: must be an int in [32, 1024]")
    if max_per_split is not None and (not isinstance(max_per_split, int) or max_per_split < 1):
        raise ValueError(f"max_per_split={max_per_split!r}: must be None or an int >= 1")
    return PROFILES[profile]


# ------------------------------------------------------------------ rows per task


def _b64(scene: Scene, ws: WorldSettings, render: bool = True) -> str:
    """The scene as base64 JPEG ("" when ``render`` is off, for the text-only tokenizer corpus)."""
    return encode_image(scene.render(), "JPEG", quality=ws.jpeg_quality) if render else ""


def _weighted(rng: np.random.Generator, pairs) -> str:
    names, weights = zip(*pairs)
    p = np.asarray(weights, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


@dataclass
class Item:
    """One generated example before it becomes a TSV row: the scene, the texts and what was intended
    (``meta``: e.g. the referent index and expression kind, the question kind) for inspection and tests."""

    task: str
    split: str
    index: int
    scene: Scene
    fields: dict
    meta: dict = field(default_factory=dict)


def _pretrain_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    counts = list(range(1, ws.pretrain_max_objects + 1))
    w = np.asarray(ws.pretrain_object_weights, dtype=float)
    rng = scene_rng(seed, f"pretrain/{split}", i)
    subtask = _weighted(rng, ws.subtask_weights)
    cfg = SceneConfig(image_size, 1, ws.pretrain_max_objects, "seen", ws.pretrain_covered_prob)
    for _ in range(100):
        scene = sample_scene(rng, cfg, n_objects=counts[int(rng.choice(len(counts), p=w / w.sum()))])
        ex = pretrain_example(scene, subtask, rng)
        if ex is not None:
            return Item("pretrain", split, i, scene, {"subtask": subtask, "source": ex[0], "target": ex[1]})
    raise RuntimeError(f"could not build a {subtask} example")  # pragma: no cover


def _refcoco_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    """Referents: testA seen (shape, colour) pairs, testB held-out pairs, train/val a mix."""
    rng = scene_rng(seed, f"refcoco/{split}", i)
    frac = {"testA": 0.0, "testB": 1.0}.get(split, ws.refcoco_held_out_fraction)
    pool = sorted(HELD_OUT_COMBOS) if rng.random() < frac else list(SEEN_COMBOS)
    lo, hi = ws.refcoco_objects
    kind = str(rng.choice(REFCOCO_KINDS, p=np.asarray(REFCOCO_KIND_WEIGHTS)))
    for attempt in range(200):
        shape, color = pool[int(rng.integers(len(pool)))]
        forced = [ObjSpec(shape, color)]
        if rng.random() < ws.refcoco_same_shape_distractor:
            other = [c for c in COLOR_NAMES if c != color]
            forced.append(ObjSpec(shape, other[int(rng.integers(len(other)))]))
        scene = sample_scene(rng, SceneConfig(image_size, lo, hi, "all"), forced=tuple(forced))
        res = refcoco_expression(scene, 0, rng, kind if attempt < 100 else None)
        if res is not None:
            meta = {"referent": 0, "kind": res[1], "held_out": (shape, color) in HELD_OUT_COMBOS}
            return Item("refcoco", split, i, scene, {"text": res[0], "box": scene.objects[0].box}, meta)
    raise RuntimeError("could not build a referring expression")  # pragma: no cover


def _snli_ve_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    """Label first, hypothesis second (independent of the label), then a scene that gives the pair."""
    rng = scene_rng(seed, f"snli_ve/{split}", i)
    label = VE_LABELS[int(rng.integers(3))]
    lo, hi = ws.ve_objects
    for attempt in range(400):
        if attempt % 20 == 0:
            claim = ve_claim(rng)
        forced = ve_forced(claim, label, rng)
        scene = sample_scene(rng, SceneConfig(image_size, lo, max(hi, len(forced)), "all", ws.ve_covered_prob),
                             forced=forced)
        if ve_label(scene, claim) == label:
            fields = {"hypothesis": claim.text, "premise": ve_premise(scene, claim, rng), "label": label}
            return Item("snli_ve", split, i, scene, fields, {"kind": claim.kind, "claim": claim})
    raise RuntimeError(f"could not build a {label} example")  # pragma: no cover


def _caption_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    rng = scene_rng(seed, f"caption/{split}", i)
    lo, hi = ws.caption_objects
    scene = sample_scene(rng, SceneConfig(image_size, lo, hi, "all", ws.caption_covered_prob))
    return Item("caption", split, i, scene, {"captions": downstream_captions(scene, rng)})


def _vqa_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    rng = scene_rng(seed, f"vqa/{split}", i)
    lo, hi = ws.vqa_objects
    kind = vqa_kind(rng)
    if kind == "count":
        return _vqa_count_item(split, i, rng, image_size, ws)
    for attempt in range(200):
        if attempt % 10 == 0:
            scene = sample_scene(rng, SceneConfig(image_size, lo, hi, "all"))
        qa = vqa_question(scene, rng, kind)
        if qa is not None:
            return _vqa(split, i, scene, qa[0], qa[1], rng, {"kind": kind})
    raise RuntimeError("could not build a question")  # pragma: no cover


def _vqa_count_item(split: str, i: int, rng: np.random.Generator, image_size: int, ws: WorldSettings) -> Item:
    """Answer first (uniform), then a scene that gives it, so the question's wording does not predict it."""
    lo, hi = ws.vqa_objects
    desc = vqa_count_desc(rng)
    question = vqa_count_question(desc, rng)
    if desc == Desc():  # every object: the answer is the scene's size
        n = int(rng.integers(lo, hi + 1))
        scene = sample_scene(rng, SceneConfig(image_size, lo, hi, "all"), n_objects=n)
        return _vqa(split, i, scene, question, str(n), rng, {"kind": "count", "desc": desc})
    k = int(rng.choice(COUNT_ANSWERS))
    for _ in range(400):
        forced = (ObjSpec(desc.shape, desc.color, desc.size),) * k
        scene = sample_scene(rng, SceneConfig(image_size, lo, max(hi, k), "all"), forced=forced)
        if len(matching(scene, desc)[0]) == k:
            return _vqa(split, i, scene, question, str(k), rng, {"kind": "count", "desc": desc})
    raise RuntimeError(f"could not build a scene with {k} of {desc}")  # pragma: no cover


def _vqa(split: str, i: int, scene: Scene, question: str, answer: str, rng: np.random.Generator,
         meta: dict) -> Item:
    fields = {"question": question, "answer": answer, "answers": annotator_answers(answer, rng)}
    return Item("vqa", split, i, scene, fields, meta)


def _pretrain_v3_item(split: str, i: int, seed: int, image_size: int, ws: WorldSettings) -> Item:
    from mmprompt.data.mixture import MIXTURES, mixture_example

    ex = mixture_example(MIXTURES["val" if split == "val" else "full"], seed, f"file-{split}", i, image_size)
    fields = {"subtask": ex.subtask, "source": ex.source, "target": ex.target}
    return Item("pretrain", split, i, ex.scene, fields, {"kind": ex.kind})


ITEM_MAKERS = {
    "pretrain": _pretrain_item,
    "refcoco": _refcoco_item,
    "snli_ve": _snli_ve_item,
    "caption": _caption_item,
    "vqa": _vqa_item,
}


def _maker(task: str, world: str):
    return _pretrain_v3_item if (task == "pretrain" and world == "v3") else ITEM_MAKERS[task]


def make_item(task: str, split: str, index: int, seed: int = DEFAULT_SEED, image_size: int = DEFAULT_IMAGE_SIZE,
              settings: WorldSettings | None = None, world: str = DEFAULT_WORLD) -> Item:  # fmt: skip
    """Example ``index`` of ``task``/``split`` exactly as :func:`generate` writes it (scene included)."""
    if task not in ITEM_MAKERS:
        raise ValueError(f"task={task!r}: allowed {tuple(ITEM_MAKERS)}")
    return _maker(task, _check_world(world))(split, index, seed, image_size, settings or WorldSettings())


def _object_labels(scene: Scene) -> str:
    return "&&".join(scene.objects[i].shape for i in left_to_right(scene))


def vqa_answer_column(answers: list[str]) -> str:
    """OFA's answers column from annotator answers: "conf|!+answer&&..." (most frequent first)."""
    counts = Counter(answers)
    order = sorted(counts, key=lambda a: (-counts[a], answers.index(a)))
    return "&&".join(f"{T.vqa_confidence(counts[a]):.1f}|!+{a}" for a in order)


def item_row(item: Item, ws: WorldSettings, render: bool = True) -> tuple:
    """The TSV row of an item in its task's layout."""
    uid, iid, f = f"{item.task}-{item.split}-{item.index:06d}", f"{item.task}-{item.split}-img{item.index:06d}", item.fields
    if item.task == "pretrain":
        img = "" if f["subtask"] == "infill" else _b64(item.scene, ws, render)
        return (uid, iid, f["subtask"], f["source"], f["target"], len(item.scene.objects), img)
    img = _b64(item.scene, ws, render)
    if item.task == "refcoco":
        return (uid, iid, f["text"], ",".join(str(v) for v in f["box"]), img)
    if item.task == "snli_ve":
        return (uid, iid, img, f["hypothesis"], f["premise"], f["label"])
    if item.task == "caption":
        return (uid, iid, "&&".join(f["captions"]), _object_labels(item.scene), img)
    return (uid, iid, f["question"], vqa_answer_column(f["answers"]), _object_labels(item.scene), img)


def task_rows(task: str, split: str, n: int, seed: int, image_size: int, ws: WorldSettings,
              render: bool = True, world: str = DEFAULT_WORLD) -> Iterator[tuple]:  # fmt: skip
    """The first ``n`` rows of a split."""
    maker = _maker(task, world)
    for i in range(n):
        yield item_row(maker(split, i, seed, image_size, ws), ws, render)


# ------------------------------------------------------------------ tokenizer corpus

_EXTRA = T.BOX_PLACEHOLDER_RE


def tokenizer_corpus(seed: int = 0, n_scenes: int = 300, image_size: int = DEFAULT_IMAGE_SIZE) -> list[str]:
    """Every kind of source and target text of the world, as encoded (leading spaces included), from
    ``n_scenes`` scenes of each task. Independent of the profile, so all profiles share one tokenizer."""
    ws = WorldSettings()
    texts: list[str] = [T.CAPTION_INSTRUCTION, T.LISTING_INSTRUCTION]
    texts += [" " + a for a in VQA_ANSWERS + T.VE_ANSWERS]
    strip = lambda t: " ".join(_EXTRA.sub(" ", t.replace("<mask>", " ")).split())  # noqa: E731
    for row in task_rows("pretrain", "tok", 3 * n_scenes, seed, image_size, ws, render=False):
        src, tgt = T.pretrain_source_target(row[2], row[3], row[4], None, 2)
        texts += [strip(src), " " + strip(tgt)]
    for task in T.TASKS:
        for row in task_rows(task, "tok", n_scenes, seed, image_size, ws, render=False):
            if task == "refcoco":
                texts.append(T.refcoco_source(row[2]))
            elif task == "snli_ve":
                texts += [T.snli_ve_source(row[3]), T.snli_ve_source(row[3], row[4])]
            elif task == "caption":
                texts += [" " + T.clean_caption_target(c) for c in row[2].split("&&")]
            else:
                texts.append(T.vqa_source(row[2], row[4].split("&&")))
    return texts


def build_tokenizer(out_dir: str | os.PathLike, settings: WorldSettings = WorldSettings()):
    """Train the nano tokenizer on :func:`tokenizer_corpus` (same for every profile) and save it."""
    return train_nano_tokenizer(
        tokenizer_corpus(), num_bins=settings.tokenizer_num_bins, vocab_size=settings.tokenizer_vocab_size, out_dir=out_dir
    )


# ------------------------------------------------------------------ generation


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_all(tmp: Path, prof: Profile, seed: int, image_size: int, ws: WorldSettings, max_per_split, progress,
               world: str = DEFAULT_WORLD) -> dict:
    sizes = {t: {s: min(n, max_per_split or n) for s, n in splits.items()} for t, splits in prof.sizes.items()}
    total = sum(n for splits in sizes.values() for n in splits.values())
    files: dict[str, dict] = {}
    with progress_bar(total=total, desc=f"synthetic {prof.name}", unit="ex", disable=not progress) as bar:
        for task, splits in sizes.items():
            for split, n in splits.items():
                path = split_path(tmp, task, split)

                def rows(task=task, split=split, n=n):
                    for row in task_rows(task, split, n, seed, image_size, ws, world=world):
                        bar.update(1)
                        yield row

                write_tsv(path, task, rows())
                files[path.name] = {"rows": n}
    write_json(tmp / ANSWER_FILE, {a: i for i, a in enumerate(VQA_ANSWERS)})
    build_tokenizer(tmp / TOKENIZER_DIR, ws)
    for name in list(files) + [ANSWER_FILE]:
        files.setdefault(name, {})["sha256"] = file_sha256(tmp / name)
    return files


def generate(
    out_dir: str | os.PathLike,
    profile: str = "ci",
    seed: int = DEFAULT_SEED,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_per_split: int | None = None,
    settings: WorldSettings | None = None,
    progress: bool = True,
    overwrite: bool = True,
    world: str = DEFAULT_WORLD,
) -> Path:
    """Write every split of ``profile`` into ``out_dir`` (atomically replaced as a whole); returns it.

    ``max_per_split`` caps every split (for quick tests). ``overwrite=False`` keeps an existing complete
    directory (used by :func:`ensure_synthetic`). ``world`` picks the pretraining mixture ("v2" or "v3",
    see :mod:`mmprompt.data.mixture`); the downstream splits are the same in both.
    """
    _check_args(profile, seed, image_size, max_per_split)
    prof = world_profile(profile, world)
    ws = settings or WorldSettings()
    out = Path(out_dir)
    tmp = temp_dir_for(out)
    t0 = time.perf_counter()
    try:
        files = _write_all(tmp, prof, seed, image_size, ws, max_per_split, progress, world)
        manifest = {
            "format_version": FORMAT_VERSIONS[world],
            **({} if world == "v2" else {"world": world}),
            "profile": profile,
            "seed": seed,
            "image_size": image_size,
            "max_per_split": max_per_split,
            "settings": asdict(ws),
            "files": files,
        }
        write_json(tmp / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    published = replace_dir(tmp, out, replace=overwrite)
    logger.info(
        "synthetic %s (seed %d, %dpx): %s in %.1f s%s",
        profile, seed, image_size, out, time.perf_counter() - t0, "" if published else " (kept the existing copy)",
    )  # fmt: skip
    return out


def default_data_root() -> Path:
    """Where generated data lives: ``$MMPROMPT_DATA_DIR`` if set, else ``data/synthetic`` of the source
    checkout this package runs from (so notebooks in ``notebooks/`` find it), else ``./data/synthetic``."""
    env = os.environ.get(env_names.DATA_DIR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "mmprompt").is_dir():
        return repo / "data" / "synthetic"
    return Path("data/synthetic")


def ensure_synthetic(
    profile: str = "ci",
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    image_size: int = DEFAULT_IMAGE_SIZE,
    progress: bool = True,
    world: str = DEFAULT_WORLD,
) -> Path:
    """The generated directory for (profile, seed, image_size) under ``root`` (default
    :func:`default_data_root`), generating it only when it is missing. A directory without ``manifest.json`` (an incomplete leftover) or made by another generator
    version (:data:`FORMAT_VERSION`, bumped whenever the generated content changes) is regenerated."""
    _check_args(profile, seed, image_size, None)
    want = FORMAT_VERSIONS[_check_world(world)]
    out = Path(root if root is not None else default_data_root()) / dataset_name(profile, seed, image_size, world)
    if (out / MANIFEST).is_file():
        version = read_manifest(out).get("format_version")
        if version == want:
            return out
        logger.warning("%s was made by generator version %s (now %s): regenerating it", out, version, want)
        return generate(out, profile, seed, image_size, progress=progress, overwrite=True, world=world)
    if out.exists():
        logger.warning("%s has no %s: regenerating it", out, MANIFEST)
        return generate(out, profile, seed, image_size, progress=progress, overwrite=True, world=world)
    return generate(out, profile, seed, image_size, progress=progress, overwrite=False, world=world)


def read_manifest(data_dir: str | os.PathLike) -> dict:
    p = Path(data_dir) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r}: no {MANIFEST} (not a generated dataset)")
    return json.loads(p.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.data.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="root directory (default: the checkout's data/synthetic)")
    parser.add_argument("--profile", choices=tuple(PROFILES), default="ci")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--max-per-split", type=int, default=None, help="cap every split (quick runs)")
    parser.add_argument("--world", choices=tuple(FORMAT_VERSIONS), default=DEFAULT_WORLD,
                        help="pretraining mixture version (v3: every downstream skill, streamed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_args(args.profile, args.seed, args.image_size, args.max_per_split)
    except ValueError as err:
        parser.error(str(err))
    t0 = time.perf_counter()
    out = Path(args.out or default_data_root()) / dataset_name(args.profile, args.seed, args.image_size, args.world)
    generate(out, args.profile, args.seed, args.image_size, max_per_split=args.max_per_split, world=args.world)
    print(f"{out}  ({time.perf_counter() - t0:.1f} s)", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
