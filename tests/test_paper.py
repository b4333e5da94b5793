"""mmprompt.workbook.paper: the paper's tables as data (spot checks against the reference, derived numbers)."""

import math

import pytest

from mmprompt.workbook import paper


def test_tables_have_the_papers_shape_and_spot_values():
    t1 = paper.table("table1")
    assert t1.shape == (4, 16) and len(paper.COLUMNS) == 16
    assert t1.loc[("base", "FT"), ("RefCOCO", "val", "Acc@0.5")] == 88.48
    assert t1.loc[("base", "PT"), ("RefCOCO", "testA", "Acc@0.5")] == 85.21  # not the early README's 95.21
    assert t1.loc[("large", "PT"), ("COCO", "test", "CIDEr")] == 141.4
    assert t1.loc[("large", "FT"), ("VQA", "test-std", "Acc")] == 80.70
    t2, t3, t4 = paper.table("table2"), paper.table("table3"), paper.table("table4")
    assert list(t2.index) == ["BitFit", "Adapter", "Prompt Tuning"]
    assert t2.loc["Adapter", ("SNLI-VE", "test", "Acc")] == 89.78
    assert t3.loc["decoder only", ("RefCOCO+", "testB", "Acc@0.5")] == 76.82
    assert t4.loc["MLP", ("RefCOCO", "testA", "Acc@0.5")] == 92.56
    # Tables 2-4 share Table 1's large prompt-tuning row
    for frame, row in ((t2, "Prompt Tuning"), (t3, "encoder+decoder"), (t4, "plain")):
        assert list(frame.loc[row]) == list(t1.loc[("large", "PT")])


def test_gaps_stated_in_the_text_follow_from_table_1():
    assert paper.refcoco_gap("base") == pytest.approx(5.64, abs=0.005)
    assert paper.refcoco_gap("large") == pytest.approx(0.59, abs=0.005)
    with pytest.raises(ValueError, match="size='huge'"):
        paper.refcoco_gap("huge")


@pytest.mark.parametrize(("size", "p64", "p100"), [
    ("tiny", 262_144, 409_600), ("medium", 524_288, 819_200), ("base", 1_179_648, 1_843_200),
    ("large", 3_145_728, 4_915_200), ("huge", 5_898_240, 9_216_000),
])
def test_prefix_parameter_counts_match_the_reference(size, p64, p100):
    assert paper.prefix_parameters(64, size) == p64 and paper.prefix_parameters(100, size) == p100


def test_other_tables_and_constants():
    assert paper.TABLE5_GPU_HOURS["VQA"] == {"FT": 616.16, "PT": 455.52}
    assert paper.TABLE6_LENGTH[64] == 92.29 and max(paper.TABLE6_LENGTH, key=paper.TABLE6_LENGTH.get) == 64
    assert paper.LENGTHS == (10, 16, 30, 64, 100, 120) and paper.RECOMMENDED_LENGTH == 64


def test_task_mapping_values_and_ratios():
    assert paper.paper_value("table1", ("large", "PT"), "refcoco", "testB") == 85.59
    assert paper.paper_value("table3", "encoder only", "snli_ve", "dev") == 89.64
    assert paper.paper_value("table1", ("base", "FT"), "caption", "test") == 138.2
    assert paper.paper_value("table1", ("base", "FT"), "vqa", "test") == 78.10
    kept = paper.relative("table1", ("base", "PT"), ("base", "FT"))
    assert kept[("refcoco", "val")] == pytest.approx(84.53 / 88.48)
    assert all(0.9 < v <= 1.01 and math.isfinite(v) for v in kept.values())
    assert paper.column("COCO", "test", "SPICE") == 13


@pytest.mark.parametrize(("call", "match"), [
    (lambda: paper.table("table9"), "name='table9'"),
    (lambda: paper.paper_value("table1", "PT", "refcoco", "val"), "row='PT'"),
    (lambda: paper.paper_value("table2", "BitFit", "refcoco", "testC"), "testC"),
    (lambda: paper.prefix_parameters(0, "base"), "length=0"),
    (lambda: paper.prefix_parameters(64, "xl"), "size='xl'"),
    (lambda: paper.column("COCO", "test", "BLEU"), "no column"),
])
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
