import hashlib
import re
from collections import Counter

import pytest

from mmprompt.data import synth
from mmprompt.data.synth import (
    SPLITS,
    Profile,
    dataset_name,
    ensure_synthetic,
    generate,
    make_item,
    read_manifest,
    split_path,
)
from mmprompt.data.tasks import vqa_answer_list
from mmprompt.data.texts import pretrain_caption, ve_label
from mmprompt.data.tsv import count_rows, parse_vqa_answers, read_tsv
from mmprompt.data.world import HELD_OUT_COMBOS, scene_rng

RELATION_WORDS = re.compile(r"\b(left|right|above|below|under|over|beneath|top|topmost|bottom|lowest|highest|"
                            r"leftmost|rightmost|bigger|larger|smaller|furthest)\b")  # fmt: skip


def _hashes(d):
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_files(tmp_path, tiny_synthetic):
    again = generate(tmp_path / "again", "ci", seed=0, max_per_split=8, progress=False)
    first, second = _hashes(tiny_synthetic), _hashes(again)
    assert first == second
    expected = {f"{t}_{s}.tsv" for t, splits in SPLITS.items() for s in splits}
    assert expected | {"trainval_ans2label.json", "manifest.json", "tokenizer/tokenizer.json"} <= set(first)
    other = generate(tmp_path / "other", "ci", seed=1, max_per_split=8, progress=False)
    assert _hashes(other)["refcoco_train.tsv"] != first["refcoco_train.tsv"]
    assert _hashes(other)["tokenizer/tokenizer.json"] == first["tokenizer/tokenizer.json"]  # one tokenizer for all


def test_manifest_and_row_counts(tiny_synthetic):
    man = read_manifest(tiny_synthetic)
    assert (man["profile"], man["seed"], man["image_size"], man["max_per_split"]) == ("ci", 0, 128, 8)
    for task, splits in SPLITS.items():
        for split in splits:
            p = split_path(tiny_synthetic, task, split)
            assert count_rows(p) == 8 == man["files"][p.name]["rows"]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == man["files"][p.name]["sha256"]
            assert len(list(read_tsv(p, task))) == 8  # every written row reads back without error


def test_split_path_and_names(tmp_path):
    assert split_path(tmp_path, "refcoco", "testB").name == "refcoco_testB.tsv"
    with pytest.raises(ValueError, match="split='test'"):
        split_path(tmp_path, "refcoco", "test")
    with pytest.raises(ValueError, match="task="):
        split_path(tmp_path, "coco", "val")
    assert dataset_name("ci") == "ci" and dataset_name("cpu", 2, 64) == "cpu-seed2-64px"


def test_bad_generation_arguments(tmp_path):
    for kwargs, name in [({"profile": "gpu"}, "profile"), ({"seed": -1}, "seed"), ({"image_size": 16}, "image_size"),
                         ({"max_per_split": 0}, "max_per_split")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            generate(tmp_path / "x", **kwargs)
    assert not list(tmp_path.iterdir())


TINY = Profile("ci", {t: {s: 3 for s in splits} for t, splits in SPLITS.items()})


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    monkeypatch.setitem(synth.PROFILES, "ci", TINY)
    d = ensure_synthetic("ci", root=tmp_path, progress=False)
    assert d == tmp_path / "ci" and (d / "manifest.json").is_file()
    marker = d / "marker"
    marker.write_text("kept")
    assert ensure_synthetic("ci", root=tmp_path, progress=False) == d
    assert marker.exists()  # not regenerated
    # an incomplete leftover (no manifest) is regenerated
    (d / "manifest.json").unlink()
    ensure_synthetic("ci", root=tmp_path, progress=False)
    assert (d / "manifest.json").is_file() and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci"]  # no temp directories left


def test_concurrent_winner_is_kept(tmp_path, monkeypatch):
    monkeypatch.setitem(synth.PROFILES, "ci", TINY)
    d = generate(tmp_path / "ci", "ci", progress=False)
    (d / "marker").write_text("first")
    generate(tmp_path / "ci", "ci", progress=False, overwrite=False)  # a second process finishing later
    assert (d / "marker").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci"]


def test_aborted_generation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(synth.PROFILES, "ci", TINY)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(synth.ITEM_MAKERS, "vqa", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "ci", "ci", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path), "--profile", "ci", "--seed", "2", "--image-size", "64",
                       "--max-per-split", "2"]) == 0  # fmt: skip
    out = tmp_path / "ci-seed2-64px"
    assert str(out) in capsys.readouterr().out
    rec = next(iter(read_tsv(out / "vqa_val.tsv", "vqa")))
    assert rec.image.size == (64, 64)
    with pytest.raises(SystemExit):
        synth.main(["--out", str(tmp_path), "--profile", "ci", "--seed", "-3"])


# ------------------------------------------------------------------ the documented shift


def _items(task, split, n):
    return [make_item(task, split, i) for i in range(n)]


def test_pretraining_never_shows_held_out_combos_or_downstream_constructions():
    items = _items("pretrain", "train", 400)
    subtasks = Counter(it.fields["subtask"] for it in items)
    assert set(subtasks) == {"caption", "grounding", "grounded_caption", "itm", "vqa", "listing", "infill"}
    for it in items:
        assert not {(o.shape, o.color) for o in it.scene.objects} & HELD_OUT_COMBOS
        text = f"{it.fields['source']} {it.fields['target']}"
        for shape, color in HELD_OUT_COMBOS:
            assert not re.search(rf"\b{color} {shape}", text), text
        if it.fields["subtask"] in ("grounding", "vqa"):
            assert not RELATION_WORDS.search(it.fields["source"]), it.fields["source"]
        if it.fields["subtask"] == "vqa":
            assert not re.match(r"(how many|is there|are there|does the)", it.fields["source"])
        if it.fields["subtask"] == "itm":
            assert it.fields["target"] in ("yes", "no")
    n_objects = Counter(len(it.scene.objects) for it in items)
    assert max(n_objects) == 4 and n_objects[1] > n_objects[4]  # the curriculum knob has one-object scenes


def test_refcoco_testa_testb_differ_by_referent_kind():
    for split, expected in [("testA", False), ("testB", True)]:
        assert all(it.meta["held_out"] is expected for it in _items("refcoco", split, 60))
    train = _items("refcoco", "train", 120)
    frac = sum(it.meta["held_out"] for it in train) / len(train)
    assert 0.3 < frac < 0.7
    for it in train[:40]:
        ref = it.scene.objects[it.meta["referent"]]
        assert it.fields["box"] == ref.box
        assert ref.shape in it.fields["text"] or "object" in it.fields["text"]


def test_refcoco_expressions_are_mostly_relational():
    kinds = Counter(it.meta["kind"] for it in _items("refcoco", "val", 150))
    assert (kinds["relation"] + kinds["extreme"] + kinds["size"]) / sum(kinds.values()) > 0.6
    assert kinds["attribute"] > 0
    scenes = [it.scene for it in _items("refcoco", "val", 100)]
    assert sum(len(s.objects) for s in scenes) / len(scenes) > 3.5  # more distractors than pretraining


def test_downstream_scenes_contain_held_out_combos():
    for task in ("snli_ve", "caption", "vqa"):
        objs = [(o.shape, o.color) for it in _items(task, "train", 80) for o in it.scene.objects]
        share = sum(c in HELD_OUT_COMBOS for c in objs) / len(objs)
        assert 0.08 < share < 0.3, (task, share)


def test_ve_labels_and_maybe_needs_a_covered_object():
    items = _items("snli_ve", "train", 150)
    labels = Counter(it.fields["label"] for it in items)
    assert set(labels) == {"entailment", "contradiction", "neutral"} and min(labels.values()) > 30
    for it in items:
        if it.fields["label"] == "neutral":
            assert any(o.covered for o in it.scene.objects)
        assert it.fields["premise"] and it.fields["hypothesis"]
        assert ve_label(it.scene, it.meta["claim"]) == it.fields["label"]


def test_ve_text_alone_does_not_give_the_label():
    """Every hypothesis kind takes all three labels about equally often, and the premise never names a
    shape the hypothesis talks about (the old generator let a text-only model reach 69 %)."""
    items = _items("snli_ve", "train", 300)
    by_kind = {}
    for it in items:
        by_kind.setdefault(it.meta["kind"], Counter())[it.fields["label"]] += 1
        shapes = {d.shape for d in it.meta["claim"].descs}
        assert not any(re.search(rf"\b{s}", it.fields["premise"]) for s in shapes), it.fields
    assert set(by_kind) == {"exists", "count", "attribute", "relation"}
    for kind, labels in by_kind.items():
        shares = [labels[lab] / sum(labels.values()) for lab in ("entailment", "contradiction", "neutral")]
        assert min(shares) > 0.2 and max(shares) < 0.47, (kind, labels)


def test_vqa_questions_answers_and_disagreement():
    items = _items("vqa", "train", 150)
    kinds = Counter(it.meta["kind"] for it in items)
    assert {"count", "exists", "relation", "extreme"} <= set(kinds)
    disagree = 0
    for it in items:
        answers = it.fields["answers"]
        assert len(answers) == 10 and Counter(answers).most_common(1)[0][0] == it.fields["answer"]
        assert Counter(answers)[it.fields["answer"]] >= 4
        disagree += len(set(answers)) > 1
        rebuilt = vqa_answer_list(parse_vqa_answers(synth.vqa_answer_column(answers)))
        assert sorted(rebuilt) == sorted(answers)
    assert 0.4 < disagree / len(items) < 0.95


def test_vqa_count_answers_are_drawn_before_the_scene():
    """Count questions about some objects answer 0-3 about equally often, and the scene agrees."""
    from mmprompt.data.texts import plural
    from mmprompt.data.world import Desc, matching

    answers = Counter()
    for it in _items("vqa", "train", 400):
        if it.meta["kind"] != "count":
            continue
        desc, answer = it.meta["desc"], it.fields["answer"]
        assert plural(desc.phrase()) in it.fields["question"]
        assert answer == str(len(matching(it.scene, desc)[0]))
        if desc != Desc():
            answers[answer] += 1
    shares = {a: n / sum(answers.values()) for a, n in answers.items()}
    assert set(shares) == {"0", "1", "2", "3"} and min(shares.values()) > 0.15, shares


def test_vqa_question_refuses_count_and_unknown_kinds():
    import numpy as np
    from mmprompt.data.texts import vqa_question

    scene = _items("vqa", "val", 1)[0].scene
    for kind in ("count", "colour"):
        with pytest.raises(ValueError, match=f"kind='{kind}'"):
            vqa_question(scene, np.random.default_rng(0), kind)


def test_caption_references_differ_from_pretraining_style():
    for it in _items("caption", "val", 60):
        refs = it.fields["captions"]
        assert len(refs) == 5 and len(set(refs)) >= 4
        assert all(len(r.split()) <= 20 for r in refs)
        rng = scene_rng(0, "style", it.index)
        assert pretrain_caption(it.scene, rng) not in refs


def test_default_root_and_public_api(monkeypatch, tmp_path):
    import mmprompt.data as data

    monkeypatch.setenv("MMPROMPT_DATA_DIR", str(tmp_path))
    assert synth.default_data_root() == tmp_path
    monkeypatch.delenv("MMPROMPT_DATA_DIR")
    assert synth.default_data_root().parts[-2:] == ("data", "synthetic")
    assert [n for n in data.__all__ if not hasattr(data, n)] == []
    assert data.ensure_synthetic is ensure_synthetic
