"""Hand-computed checks of every metric in mmprompt.eval.metrics."""

import logging
import shutil

import numpy as np
import pytest
import torch

from mmprompt.eval import metrics as M

# ---------------------------------------------------------------- IoU / Acc@0.5


def test_iou_of_known_boxes():
    # identical boxes
    assert M.iou([0, 0, 2, 2], [0, 0, 2, 2]) == pytest.approx(1.0)
    # [0,2]x[0,2] vs [1,3]x[1,3]: intersection 1x1 = 1, union 4 + 4 - 1 = 7
    assert M.iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    # [0,4]x[0,2] vs [2,6]x[0,2]: intersection 2x2 = 4, union 8 + 8 - 4 = 12
    assert M.iou([0, 0, 4, 2], [2, 0, 6, 2]) == pytest.approx(1 / 3)
    # nested: [0,10]^2 contains [0,5]x[0,10] -> 50 / 100
    assert M.iou([0, 0, 10, 10], [0, 0, 5, 10]) == pytest.approx(0.5)
    # touching edges and disjoint boxes
    assert M.iou([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0
    assert M.iou([0, 0, 1, 1], [5, 5, 6, 6]) == 0.0
    # a degenerate (inverted) box has zero area and a zero-union pair scores 0, not NaN
    assert M.iou([2, 2, 1, 1], [0, 0, 3, 3]) == 0.0
    assert M.iou([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0


def test_paired_iou_is_vectorised_and_accepts_tensors():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 2], [0, 0, 10, 10.0]])
    b = np.array([[1, 1, 3, 3], [2, 0, 6, 2], [0, 0, 5, 10]])
    np.testing.assert_allclose(M.paired_iou(a, b), [1 / 7, 1 / 3, 0.5])


def test_acc_at_05_counts_iou_at_least_half():
    gold = [[0, 0, 10, 10]] * 4
    # IoUs: 1.0, 0.5 (exactly at the threshold counts), 0.49, 0.0  -> 2 / 4
    pred = [[0, 0, 10, 10], [0, 0, 5, 10], [0, 0, 4.9, 10], [20, 20, 30, 30]]
    assert M.acc_at_05(pred, gold) == pytest.approx(0.5)
    out = M.score("refcoco", pred, gold)
    assert out["acc@0.5"] == pytest.approx(0.5)
    assert out["mean_iou"] == pytest.approx((1 + 0.5 + 0.49 + 0) / 4)
    assert out["n"] == 4


@pytest.mark.parametrize("bad", [[[0, 0, 1]], [[0, 0, 1, float("nan")]], np.zeros((2, 2, 4))])
def test_box_shape_errors(bad):
    with pytest.raises(ValueError, match="boxes"):
        M.paired_iou(bad, bad)


def test_acc_at_05_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        M.acc_at_05([[0, 0, 1, 1]] * 2, [[0, 0, 1, 1]] * 3)


# ---------------------------------------------------------------- SNLI-VE


def test_ve_accuracy_with_ofa_answer_words():
    preds = ["yes", "No", "maybe", "entailment", "neutral"]
    gold = ["entailment", "contradiction", "neutral", "contradiction", "neutral"]
    assert M.ve_accuracy(preds, gold) == pytest.approx(4 / 5)
    assert M.score("snli_ve", [0, 1, 2], [0, 2, 2]) == {"accuracy": pytest.approx(2 / 3), "n": 3}


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("dont", "don't"),
        ("The Cat", "cat"),
        ("none", "0"),
        ("yes!", "yes"),  # "!" not touching a space is replaced by a space, then stripped by split
        ("2.5", "2.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit-comma-digit: punctuation is deleted, not spaced
        ("red,white", "red white"),
        ("red, white", "red white"),
        ("  ten\t", "10"),
        ("isnt it", "isn't it"),
        ("an apple", "apple"),
    ],
)
def test_vqa_normalisation(answer, expected):
    assert M.normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # 10 annotators, k of them give the predicted answer. Leaving out one of the k matching
        # annotators leaves k-1 matches, leaving out one of the 10-k others leaves k:
        # acc = [k * min(1, (k-1)/3) + (10-k) * min(1, k/3)] / 10
        (0, 0.0),  # 0
        (1, 0.3),  # [1*0 + 9*(1/3)] / 10 = 3/10
        (2, 0.6),  # [2*(1/3) + 8*(2/3)] / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # [3*(2/3) + 7*1] / 10 = (2 + 7) / 10
        (4, 1.0),  # [4*1 + 6*1] / 10
        (10, 1.0),
    ],
)
def test_vqa_ten_choose_nine(matches, expected):
    answers = ["two"] * matches + ["blue"] * (10 - matches)
    assert M.vqa_accuracy_single("2", answers) == pytest.approx(expected)


def test_vqa_single_answer_and_mean():
    assert M.vqa_accuracy_single("A dog.", "dog") == 1.0
    assert M.vqa_accuracy_single("cat", ["dog"]) == 0.0
    refs = [["yes"] * 10, ["two"] + ["three"] * 9, "red"]
    out = M.score("vqa", ["Yes", "2", "blue"], refs)
    assert out["accuracy"] == pytest.approx((1.0 + 0.3 + 0.0) / 3)


def test_vqa_strict_official_quirk():
    # the official script normalises only when the annotators disagree
    assert M.vqa_accuracy_single("Yes", ["yes"] * 10, strict_official=True) == 0.0
    assert M.vqa_accuracy_single("Yes", ["yes"] * 9 + ["no"], strict_official=True) == 1.0
    assert M.vqa_accuracy_single("Yes", ["yes"] * 10) == 1.0


# ---------------------------------------------------------------- captions


def test_python_tokenizer():
    assert M.python_ptb_tokenize("A man's dog doesn't run.") == "a man 's dog does n't run"
    assert M.python_ptb_tokenize("Two dogs -- playing, in the snow!") == "two dogs playing in the snow"
    assert M.python_ptb_tokenize("A black-and-white cat at 3.5 a.m.") == "a black-and-white cat at 3.5 a.m."


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java for the Stanford PTB tokenizer")
def test_python_tokenizer_agrees_with_java_ptb_on_ordinary_captions():
    caps = ["A man's dog doesn't run.", "Two dogs -- playing, in the snow!", "It's 10:30 a.m. and they're here",
            "A red circle to the left of a blue square.", "two people ride bikes, next to cars", "can't won't I'm"]
    java = M._tokenize_captions({0: caps}, "ptb")[0]
    assert java == [M.python_ptb_tokenize(c) for c in caps]


def _world(n=6):
    """n images; image i has 3 references whose n-grams occur in no other image (df = 1)."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
    shapes = ["circle", "square", "triangle", "star", "heart", "hexagon", "cross", "ring"]
    refs = [[f"a {colours[i]} {shapes[i]} on grass{i}", f"{colours[i]} {shapes[i]} here{i}",
             f"one {colours[i]} {shapes[i]} only{i}"] for i in range(n)]
    return refs


def test_bleu4_of_identical_sentences_is_one():
    refs = [["a red circle on the left of a blue square"], ["two green stars above a yellow ring"]]
    out = M.caption_scores([r[0] for r in refs], refs, tokenizer="python", meteor=False, spice=False)
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert out["bleu1"] == pytest.approx(1.0, abs=1e-6)


def test_cider_hand_computed_values():
    # Each reference set has a single caption whose n-grams are unique to its image, so every
    # n-gram has df = 1 and the same idf log(N); tf-idf vectors are proportional to counts.
    # A prediction equal to its reference has cosine 1 for every n with a non-empty n-gram set and
    # no length penalty, so CIDEr-D = 10 * mean_n(cos_n): 10 for >= 4 words, 10 * 2/4 = 5 for 2 words.
    refs = [["red circle grass0 left0"], ["blue square grass1 left1"], ["green star"], ["pink ring"]]
    preds = [r[0] for r in refs]
    out = M.caption_scores(preds, refs, tokenizer="python", meteor=False, spice=False)
    assert out["cider"] == pytest.approx((10 + 10 + 5 + 5) / 4)
    # predicting the wrong image's caption shares no n-gram: CIDEr-D 0 for those images
    swapped = [preds[1], preds[0], preds[2], preds[3]]
    out = M.caption_scores(swapped, refs, tokenizer="python", meteor=False, spice=False)
    assert out["cider"] == pytest.approx((0 + 0 + 5 + 5) / 4)


def test_cider_ranks_better_captions_higher():
    refs = _world(8)
    good = [r[0] for r in refs]  # a reference itself
    partial = [" ".join(r[0].split()[:3]) for r in refs]  # "a red circle": right words, too short
    wrong = [refs[(i + 1) % len(refs)][0] for i in range(len(refs))]  # another image's caption
    scores = [M.score("caption", p, refs, tokenizer="python", meteor=False, spice=False)["cider"]
              for p in (good, partial, wrong)]
    assert scores[0] > scores[1] > scores[2] >= 0.0
    assert scores[2] == pytest.approx(0.0, abs=0.05)  # only "a" is shared, and "a" is in every image


def test_meteor_and_spice_are_none_without_java(monkeypatch, caplog):
    monkeypatch.setattr(M, "_java_available", lambda: False)
    refs = _world(4)
    with caplog.at_level(logging.WARNING, logger="mmprompt.eval.metrics"):
        out = M.caption_scores([r[0] for r in refs], refs, tokenizer="auto")
    assert out["meteor"] is None and out["spice"] is None
    assert "METEOR skipped" in caplog.text and "SPICE skipped" in caplog.text
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="java"):
        M.caption_scores(["a"], ["a"], tokenizer="ptb")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_with_java_scores_identical_captions_near_one():
    # one METEOR call (~6 s: the jar loads its paraphrase table); a caption equal to a reference
    # matches every word in one chunk, so only the tiny fragmentation penalty remains
    refs = _world(4)
    assert M.caption_scores([r[0] for r in refs], refs, spice=False)["meteor"] > 0.9


# ---------------------------------------------------------------- entry point


def test_score_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        M.score("coco", ["a"], ["a"])
    with pytest.raises(ValueError, match="same length"):
        M.score("vqa", ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        M.score("snli_ve", [], [])
    with pytest.raises(ValueError, match="unknown option"):
        M.score("snli_ve", ["yes"], ["yes"], tokenizer="python")
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        M.score("caption", ["a"], [["a"]], tokenizer="nltk")
    with pytest.raises(ValueError, match=r"references\[0\]"):
        M.score("caption", ["a"], [[]], tokenizer="python")


# ---------------------------------------------------------------- per-example scores


def test_per_example_scores_average_to_the_headline_metric():
    boxes_pred = [[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 4, 2]]
    boxes_gold = [[0, 0, 2, 2], [1, 1, 3, 3], [2, 0, 6, 2]]  # IoU 1, 1/7, 1/3
    m, per = M.score_with_examples("refcoco", boxes_pred, boxes_gold)
    assert per == [1.0, 0.0, 0.0] and m["acc@0.5"] == pytest.approx(1 / 3)
    _, per = M.score_with_examples("refcoco", boxes_pred, boxes_gold, threshold=0.3)
    assert per == [1.0, 0.0, 1.0]
    m, per = M.score_with_examples("snli_ve", ["yes", "no", "maybe", "yes"],
                                   ["entailment", "no", "contradiction", "neutral"])
    assert per == [1.0, 1.0, 0.0, 0.0] and m["accuracy"] == 0.5
    answers = [["two"] * 2 + ["2"] * 8, ["red"] * 2 + ["blue"] * 8]
    m, per = M.score_with_examples("vqa", ["2", "red"], answers)
    # "two" normalises to "2": 10 matches -> 1; "red": 2 matches -> mean over leave-one-out = 0.6
    assert per == pytest.approx([1.0, 0.6]) and m["accuracy"] == pytest.approx(0.8)
    caps = ["a man riding a horse", "a dog on a couch", "two cats sleeping", "a red car parked"] * 3
    refs = [["a man rides a horse", "a person on a horse"], ["a dog lying on a couch"],
            ["two cats asleep on a bed"], ["a red car on the street"]] * 3
    m, per = M.score_with_examples("caption", caps, refs, tokenizer="python", meteor=False, spice=False)
    assert len(per) == 12 and float(np.mean(per)) == pytest.approx(m["cider"], rel=1e-9)
    assert m == M.score("caption", caps, refs, tokenizer="python", meteor=False, spice=False)


def test_cached_cider_per_image_averages_to_the_corpus_value():
    from mmprompt.eval.cider import cider_d, cider_d_per_image

    caps = ["a man riding a horse", "a dog on a couch", "two cats sleeping"]
    refs = [["a man rides a horse"], ["a dog lying on a couch"], ["two cats asleep on a bed"]]
    per = cider_d_per_image(caps, refs)
    assert len(per) == 3 and per[0] != per[1]
    assert cider_d(caps, refs) == pytest.approx(sum(per) / 3, abs=1e-12)
