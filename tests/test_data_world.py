import numpy as np
import pytest

from mmprompt.data.world import (
    COLORS,
    COVER_COLOR,
    HELD_OUT_COMBOS,
    SHAPES,
    SIZES,
    Desc,
    Obj,
    Scene,
    SceneConfig,
    minimal_description,
    render_scene,
    sample_scene,
    scene_rng,
    unique_referent,
)


def _scenes(n=300, **cfg):
    return [sample_scene(scene_rng(0, "t", i), SceneConfig(**cfg)) for i in range(n)]


def test_world_vocabulary():
    assert len(SHAPES) >= 5 and len(COLORS) >= 8 and SIZES == ("small", "large")
    assert len(HELD_OUT_COMBOS) == 8
    assert {c for _, c in HELD_OUT_COMBOS} == set(COLORS)  # every colour stays seen with other shapes


def test_scenes_are_deterministic_and_order_free():
    a = sample_scene(scene_rng(3, "x", 7))
    sample_scene(scene_rng(3, "x", 6))
    assert sample_scene(scene_rng(3, "x", 7)) == a
    assert render_scene(a).tobytes() == render_scene(sample_scene(scene_rng(3, "x", 7))).tobytes()
    assert sample_scene(scene_rng(4, "x", 7)) != a


def test_scene_constraints():
    scenes = _scenes(300, covered_prob=0.3)
    counts = [len(s.objects) for s in scenes]
    assert min(counts) == 1 and max(counts) == 6
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.color for s in scenes for o in s.objects} == set(COLORS)
    assert 0.15 < np.mean([any(o.covered for o in s.objects) for s in scenes]) < 0.45
    for s in scenes:
        for k, o in enumerate(s.objects):
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= s.image_size and 0 <= y0 < y1 <= s.image_size
            for p in s.objects[k + 1 :]:  # no overlap at all
                assert x1 <= p.box[0] or p.box[2] <= x0 or y1 <= p.box[1] or p.box[3] <= y0


def test_sizes_differ_clearly():
    scenes = _scenes(200)
    small = [o.box[2] - o.box[0] for s in scenes for o in s.objects if o.size == "small"]
    large = [o.box[2] - o.box[0] for s in scenes for o in s.objects if o.size == "large"]
    assert max(small) < min(large)


def test_seen_combos_exclude_held_out():
    for s in _scenes(400, combos="seen"):
        assert not {(o.shape, o.color) for o in s.objects} & HELD_OUT_COMBOS


def test_rendering_shows_colour_and_hides_covered_colour():
    objs = (
        Obj("square", "red", "large", (10, 10, 40, 40)),
        Obj("circle", "blue", "large", (60, 60, 94, 94), covered=True),
    )
    img = render_scene(Scene(128, objs, background_seed=1), noise_std=0)
    assert img.size == (128, 128)
    assert img.getpixel((25, 20)) == COLORS["red"]
    assert img.getpixel((70, 77)) == COVER_COLOR  # inside the circle, off the hatch
    pixels = np.asarray(img).reshape(-1, 3)
    assert not (pixels == np.asarray(COLORS["blue"])).all(axis=1).any()
    assert (pixels == np.asarray(COLORS["red"])).all(axis=1).sum() > 500


def test_image_size_is_configurable():
    s = sample_scene(scene_rng(0, "x", 1), SceneConfig(image_size=64))
    assert render_scene(s).size == (64, 64)
    with pytest.raises(ValueError, match="image_size"):
        SceneConfig(image_size=8)
    with pytest.raises(ValueError, match="combos"):
        SceneConfig(combos="some")


def test_three_valued_matching():
    objs = (
        Obj("circle", "red", "small", (0, 0, 10, 10)),
        Obj("circle", "blue", "large", (20, 0, 50, 30), covered=True),
        Obj("star", "red", "small", (60, 0, 70, 10)),
    )
    s = Scene(128, objs, 0)
    assert Desc("circle", "red").matches(objs[1]) is None  # the colour of a covered object is unknown
    assert unique_referent(s, Desc("circle", "red")) is None  # so "the red circle" is ambiguous
    assert unique_referent(s, Desc("star")) == 2
    assert unique_referent(s, Desc("circle", covered=True)) == 1
    d = minimal_description(s, 0, np.random.default_rng(0))
    assert d is not None and unique_referent(s, d) == 0
