import pytest

from mmprompt.data.texts import parse_listing
from mmprompt.nano.perception import FIELDS, grounding_by_objects, perception, score_object

GOLD = "large purple circle <bin_15> <bin_2> <bin_32> <bin_19>"


def test_parse_listing_reads_every_listed_object():
    assert parse_listing(GOLD + " small red square<bin_1><bin_1><bin_5><bin_5> large blue") == [
        {"size": "large", "colour": "purple", "shape": "circle", "box": [15, 2, 32, 19]},
        {"size": "small", "colour": "red", "shape": "square", "box": [1, 1, 5, 5]}]
    assert parse_listing("large purple") == []


@pytest.mark.parametrize("pred,expected", [
    (GOLD, dict(size=1, colour=1, shape=1, box=1)),
    ("large red square<bin_15><bin_2><bin_32><bin_20>", dict(size=1, colour=0, shape=0, box=1)),  # unspaced bins
    ("small purple circle <bin_40> <bin_40> <bin_50> <bin_50>", dict(size=0, colour=1, shape=1, box=0)),
    ("large purple", dict.fromkeys(FIELDS, 0)),
])
def test_score_object_field_by_field(pred, expected):
    assert score_object(pred, GOLD) == expected


def test_bad_gold_and_examples_are_rejected(tiny_synthetic):
    with pytest.raises(ValueError, match="gold='a red circle'"):
        score_object(GOLD, "a red circle")
    with pytest.raises(ValueError, match="examples=0"):
        perception(None, tiny_synthetic, examples=0)


def test_perception_of_the_shipped_checkpoint(tiny_synthetic):
    from mmprompt import load_model

    small = load_model("ofa-nano-small")
    with pytest.raises(ValueError, match="no usable listing rows"):
        perception(small, tiny_synthetic)
    out = perception(small, profile="ci", examples=8)
    assert out["n"] >= 1 and set(out) == {*FIELDS, "n"} and all(0 <= out[k] <= 1 for k in FIELDS)
    assert out["box"] > 0.5  # the shipped checkpoints localise single objects (colour/shape: see the cards)


def test_grounding_by_objects_of_the_shipped_checkpoint():
    from mmprompt import load_model

    out = grounding_by_objects(load_model("ofa-nano-small"), profile="ci", examples=40)
    assert sum(g["n"] for g in out.values()) >= 1 and all(0 <= g["acc"] <= 1 for g in out.values())
    assert out["1"]["acc"] > 0.5  # a lone object is found (several: see the model cards)
    with pytest.raises(ValueError, match="examples=-1"):
        grounding_by_objects(None, examples=-1)
