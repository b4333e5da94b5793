"""The synthetic world: seeded scenes of coloured shapes with bounding boxes, rendered with PIL.

A scene holds 1–6 objects, each a (shape, colour, size) at a free position with its pixel box
``(x0, y0, x1, y1)`` (left/top edge, right/bottom edge; ``x1 - x0`` is the object's width). Objects never
overlap (a small gap is kept), so every box is meaningful. The background is a light tint with pixel noise
and thin clutter strokes. A *covered* object is drawn as a grey silhouette: its shape and box stay visible
but its colour is hidden (the source of "maybe" in visual entailment).

Eight (shape, colour) combinations are *held out* (:data:`HELD_OUT_COMBOS`): the pretraining corpus never
contains them; the downstream tasks do (see ``data/README.md``, "The shift").

Everything is a pure function of a ``numpy.random.Generator``; :func:`scene_rng` derives an independent
generator per (seed, stream, index), so the same seed gives the same scenes in any order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 80, 214),
    "yellow": (238, 206, 32),
    "purple": (128, 52, 178),
    "orange": (250, 128, 14),
    "cyan": (23, 198, 208),
    "pink": (247, 129, 191),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
# Side length of an object as a fraction of the image side, per size.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "large": (0.24, 0.30)}
COVER_COLOR: tuple[int, int, int] = (128, 128, 128)
OUTLINE_COLOR: tuple[int, int, int] = (50, 50, 50)

# Never in pretraining; present in every downstream task. One per colour, spread over the shapes.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "yellow"),
        ("square", "purple"),
        ("triangle", "red"),
        ("triangle", "cyan"),
        ("diamond", "orange"),
        ("star", "green"),
        ("star", "pink"),
        ("cross", "blue"),
    }
)
ALL_COMBOS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOR_NAMES)
SEEN_COMBOS: tuple[tuple[str, str], ...] = tuple(sc for sc in ALL_COMBOS if sc not in HELD_OUT_COMBOS)


@dataclass(frozen=True)
class Obj:
    """One object of a scene. ``box`` is (x0, y0, x1, y1) in pixels of the rendered image."""

    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    covered: bool = False
    cell: tuple[int, int, int, int] | None = None  # square drawing cell (defaults to the box)

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def visible_color(self) -> str | None:
        """The colour an observer can see (None when covered)."""
        return None if self.covered else self.color


@dataclass(frozen=True)
class Scene:
    """A scene: image side length, objects, and the parameters of its background."""

    image_size: int
    objects: tuple[Obj, ...]
    background_seed: int
    background_tint: tuple[int, int, int] = (235, 235, 230)
    noise_std: float = 6.0
    clutter: tuple[int, int] = (2, 6)

    def render(self) -> Image.Image:
        return render_scene(self)


@dataclass(frozen=True)
class SceneConfig:
    """How to sample a scene.

    ``combos``: which (shape, colour) pairs may appear ("seen" excludes :data:`HELD_OUT_COMBOS`, "all" allows
    every pair). ``covered_prob``: probability that one object of the scene is covered (colour hidden).
    ``max_large``: at most this many large objects (keeps dense scenes placeable).
    """

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    combos: str = "all"
    covered_prob: float = 0.0
    noise_std: float = 6.0
    clutter: tuple[int, int] = (2, 6)
    max_large: int = 3
    gap: int = 2

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size!r}: must be an int >= 32")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"min_objects={self.min_objects!r}, max_objects={self.max_objects!r}: "
                "need 1 <= min_objects <= max_objects <= 6"
            )
        if self.combos not in ("all", "seen"):
            raise ValueError(f"combos={self.combos!r}: allowed 'all' or 'seen'")
        if not 0.0 <= self.covered_prob <= 1.0:
            raise ValueError(f"covered_prob={self.covered_prob!r}: must be in [0, 1]")


def scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """An independent generator for item ``index`` of ``stream`` (e.g. "refcoco/train") under ``seed``."""
    digest = hashlib.sha256(f"{seed}|{stream}|{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _allowed(config: SceneConfig) -> tuple[tuple[str, str], ...]:
    return SEEN_COMBOS if config.combos == "seen" else ALL_COMBOS


def _side(rng: np.random.Generator, size: str, image_size: int) -> int:
    lo, hi = SIZE_RANGES[size]
    return max(6, int(round(rng.uniform(lo, hi) * image_size)))


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in others)


def _place(
    rng: np.random.Generator, side: int, placed: list[tuple[int, int, int, int]], config: SceneConfig
) -> tuple[int, int, int, int] | None:
    margin = 2
    hi = config.image_size - side - margin
    if hi <= margin:
        return None
    for _ in range(60):
        x0, y0 = (int(v) for v in rng.integers(margin, hi + 1, size=2))
        box = (x0, y0, x0 + side, y0 + side)
        if not _overlaps(box, placed, config.gap):
            return box
    return None


@dataclass(frozen=True)
class ObjSpec:
    """A requested object for :func:`sample_scene`; None fields are sampled."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    covered: bool = False


def sample_scene(
    rng: np.random.Generator,
    config: SceneConfig = SceneConfig(),
    n_objects: int | None = None,
    forced: tuple[ObjSpec, ...] = (),
) -> Scene:
    """Sample a scene. ``forced`` objects come first in the object list and are always placed."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1)) if n_objects is None else n_objects
    n = max(n, len(forced))
    allowed = _allowed(config)
    specs: list[ObjSpec] = list(forced)
    for _ in range(n - len(forced)):
        shape, color = allowed[int(rng.integers(len(allowed)))]
        specs.append(ObjSpec(shape, color, None))
    resolved: list[tuple[str, str, str, bool]] = []
    n_large = 0
    for spec in specs:
        shape = spec.shape or allowed[int(rng.integers(len(allowed)))][0]
        color = spec.color or _color_for(rng, shape, allowed)
        size = spec.size or SIZES[int(rng.integers(2))]
        if size == "large" and spec.size is None and n_large >= config.max_large:
            size = "small"
        n_large += size == "large"
        resolved.append((shape, color, size, spec.covered))
    if config.covered_prob > 0 and rng.random() < config.covered_prob and not any(r[3] for r in resolved):
        k = int(rng.integers(len(resolved)))
        if k >= len(forced):
            resolved[k] = resolved[k][:3] + (True,)
    # Place large objects first (they are the hardest to fit); forced ones never get dropped.
    order = sorted(range(len(resolved)), key=lambda i: (i >= len(forced), resolved[i][2] != "large"))
    placed: dict[int, Obj] = {}
    boxes: list[tuple[int, int, int, int]] = []
    for i in order:
        shape, color, size, covered = resolved[i]
        box = _place(rng, _side(rng, size, config.image_size), boxes, config)
        if box is None and size == "large" and i >= len(forced):
            size = "small"
            box = _place(rng, _side(rng, size, config.image_size), boxes, config)
        if box is None:
            if i < len(forced):
                raise RuntimeError("could not place a forced object; the scene is too dense")
            continue
        boxes.append(box)
        placed[i] = Obj(shape, color, size, _tight_box(shape, box), covered, box)
    objects = tuple(placed[i] for i in sorted(placed))
    tint = tuple(int(v) for v in rng.integers(215, 246, size=3))
    return Scene(config.image_size, objects, int(rng.integers(2**31)), tint, config.noise_std, config.clutter)  # type: ignore[arg-type]


def _color_for(rng: np.random.Generator, shape: str, allowed: tuple[tuple[str, str], ...]) -> str:
    colors = [c for s, c in allowed if s == shape]
    return colors[int(rng.integers(len(colors)))]


# ---------------------------------------------------------------- geometry and rendering


def shape_polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape inside its square cell ``box`` (None for a circle)."""
    x0, y0, x1, y1 = box
    s = x1 - x0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        return None
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        r_out, r_in = s / 2, s / 2 * 0.45
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        return pts
    if shape == "cross":
        a = s / 6
        return [
            (cx - a, y0), (cx + a, y0), (cx + a, cy - a), (x1, cy - a), (x1, cy + a), (cx + a, cy + a),
            (cx + a, y1), (cx - a, y1), (cx - a, cy + a), (x0, cy + a), (x0, cy - a), (cx - a, cy - a),
        ]  # fmt: skip
    raise ValueError(f"shape={shape!r}: allowed {SHAPES}")


def _tight_box(shape: str, cell: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box of the drawn shape (a star is shorter than its cell)."""
    pts = shape_polygon(shape, cell)
    if pts is None:
        return cell
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (int(math.floor(min(xs))), int(math.floor(min(ys))), int(math.ceil(max(xs))), int(math.ceil(max(ys))))


def draw_object(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    fill = COVER_COLOR if obj.covered else COLORS[obj.color]
    cell = obj.cell or obj.box
    pts = shape_polygon(obj.shape, cell)
    if pts is None:
        draw.ellipse([cell[0], cell[1], cell[2] - 1, cell[3] - 1], fill=fill, outline=OUTLINE_COLOR)
    else:
        draw.polygon([(min(x, cell[2] - 1), min(y, cell[3] - 1)) for x, y in pts], fill=fill, outline=OUTLINE_COLOR)
    if obj.covered:  # a hatch marks the cover
        x0, y0, x1, y1 = obj.box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        q = (x1 - x0) / 6
        draw.line([(cx - q, cy - q), (cx + q, cy + q)], fill=(90, 90, 90), width=1)
        draw.line([(cx - q, cy + q), (cx + q, cy - q)], fill=(90, 90, 90), width=1)


def _background(scene: Scene, noise_std: float, clutter: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(scene.background_seed)
    s = scene.image_size
    base = np.empty((s, s, 3), dtype=np.float32)
    base[:] = np.asarray(scene.background_tint, dtype=np.float32)
    ramp = np.linspace(-8, 8, s, dtype=np.float32)
    base += (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]) * rng.uniform(0.3, 1.0)
    if noise_std > 0:
        base += rng.normal(0.0, noise_std, size=(s, s, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        g = int(rng.integers(150, 200))
        color = (g, g - int(rng.integers(0, 15)), g - int(rng.integers(0, 25)))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, s, size=4))
        if rng.random() < 0.7:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=1)
        else:
            r = int(rng.integers(1, 3))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=color)
    return img


def render_scene(scene: Scene, noise_std: float | None = None, clutter: tuple[int, int] | None = None) -> Image.Image:
    """Draw a scene (background, clutter, then objects). Deterministic for a given scene; ``noise_std`` and
    ``clutter`` override the scene's own settings."""
    img = _background(
        scene, scene.noise_std if noise_std is None else noise_std, scene.clutter if clutter is None else clutter
    )
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw_object(draw, obj)
    return img


# ---------------------------------------------------------------- descriptions and three-valued matching


@dataclass(frozen=True)
class Desc:
    """An attribute description ("the small red circle"); None fields are unconstrained."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    covered: bool = False

    def matches(self, obj: Obj) -> bool | None:
        """True / False, or None when the image cannot decide (a colour asked of a covered object)."""
        if self.shape is not None and obj.shape != self.shape:
            return False
        if self.size is not None and obj.size != self.size:
            return False
        if self.covered:
            return obj.covered
        if self.color is not None:
            if obj.covered:
                return None
            return obj.color == self.color
        return True

    def phrase(self, noun: str = "object") -> str:
        """"small red circle", "covered star", "red object"."""
        words = [w for w in (self.size, "covered" if self.covered else self.color) if w]
        return " ".join(words + [self.shape or noun])


def describe(obj: Obj, color: bool = True, size: bool = False) -> Desc:
    """A description of ``obj`` with the chosen attributes (a covered object is "covered", never a colour)."""
    if obj.covered:
        return Desc(obj.shape, None, obj.size if size else None, covered=color)
    return Desc(obj.shape, obj.color if color else None, obj.size if size else None)


def matching(scene: Scene, desc: Desc) -> tuple[list[int], list[int]]:
    """Indices of objects that surely match and that might match ``desc``."""
    sure, maybe = [], []
    for i, o in enumerate(scene.objects):
        m = desc.matches(o)
        if m is True:
            sure.append(i)
        elif m is None:
            maybe.append(i)
    return sure, maybe


def unique_referent(scene: Scene, desc: Desc) -> int | None:
    """The index of the single object ``desc`` picks out without doubt, else None."""
    sure, maybe = matching(scene, desc)
    return sure[0] if len(sure) == 1 and not maybe else None


def minimal_description(scene: Scene, index: int, rng: np.random.Generator) -> Desc | None:
    """A shortest unique attribute description of object ``index`` (random among equally short ones)."""
    obj = scene.objects[index]
    options = [(False, False), (True, False), (False, True), (True, True)]
    for n_attrs in (0, 1, 2):
        cands = [describe(obj, c, z) for c, z in options if c + z == n_attrs]
        order = rng.permutation(len(cands))
        for k in order:
            if unique_referent(scene, cands[int(k)]) == index:
                return cands[int(k)]
    return None


def with_objects(scene: Scene, objects: tuple[Obj, ...]) -> Scene:
    return replace(scene, objects=objects)


def combos_in(scene: Scene) -> set[tuple[str, str]]:
    """The (shape, colour) pairs present in a scene (covered objects included)."""
    return {(o.shape, o.color) for o in scene.objects}


__all__ = [
    "ALL_COMBOS",
    "COLORS",
    "COLOR_NAMES",
    "Desc",
    "HELD_OUT_COMBOS",
    "Obj",
    "ObjSpec",
    "SEEN_COMBOS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneConfig",
    "combos_in",
    "describe",
    "matching",
    "minimal_description",
    "render_scene",
    "sample_scene",
    "scene_rng",
    "unique_referent",
]
