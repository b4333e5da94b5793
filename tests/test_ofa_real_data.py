"""OFA's released data layout read exactly as OFA's dataset classes do (data/mm_data/{refcoco,snli_ve,caption,
vqa_gen}_dataset.py, branch feature/prompt_tuning), and a one-step gpu-recipe run per dataset on the CPU."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from ofa_fixture_data import ANS2LABEL, REFCOCO_ROWS, SIZES, make_ofa_data

from mmprompt import load_model, tune
from mmprompt.data import TaskDataset, collate_batch, encode_text, load_answer_list
from mmprompt.data.boxes import bins_to_box, iou, ofa_box_bins
from mmprompt.data.ofa_files import check_run_files, dataset_files, ofa_dataset_kwargs, scored_splits, split_file
from mmprompt.data.safe_pickle import load_plain_pickle
from mmprompt.data.tokenizer import BOS, EOS, PAD, bin_token_ids
from mmprompt.training.losses import seq2seq_loss

S = 64


@pytest.fixture(scope="module")
def ofa(tmp_path_factory):
    return make_ofa_data(tmp_path_factory.mktemp("ofa"))


def _ids(tok, text):
    return [BOS, *encode_text(tok, text), EOS]


def _dataset(d, task, split, tok, size=S, **kw):
    return TaskDataset(split_file(d, task, split), task, tok, size, **ofa_dataset_kwargs(task, split), **kw)


# ------------------------------------------------------------------ layout


def test_each_directory_is_recognised_with_its_scored_splits(ofa):
    assert [dataset_files(ofa[n], "refcoco").name for n in ("refcoco", "refcocoplus", "refcocog")] == [
        "refcoco", "refcocoplus", "refcocog"]
    assert scored_splits(ofa["refcocoplus"], "refcoco") == ("val", ("testA", "testB"))
    assert scored_splits(ofa["refcocog"], "refcoco") == ("val", ("test",))
    assert split_file(ofa["refcocog"], "refcoco", "test").name == "refcocog_test.tsv"
    assert split_file(ofa["caption"], "caption", "train").name == "caption_stage1_train.tsv"
    assert scored_splits(ofa["snli_ve"], "snli_ve") == ("dev", ("test",))


def test_missing_splits_are_named_before_training(ofa, tmp_path, random_ofa_dir):
    for f in ofa["refcocog"].iterdir():
        if "val" in f.name:
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"\['refcocog_train\.tsv', 'refcocog_test\.tsv'\].*refcocog_data\.zip"):
        check_run_files(tmp_path, "refcoco", ("train", "val", "test"))
    backbone = load_model(random_ofa_dir)
    with pytest.raises(FileNotFoundError, match="refcocog_train.tsv"):  # refused before any training
        tune(backbone, "refcoco", "prefix", profile="gpu", data_dir=tmp_path, recipe={"device": "cpu"})
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for n in ("refcoco_val.tsv", "refcocog_val.tsv"):
        (mixed / n).write_text("")
    with pytest.raises(ValueError, match="several refcoco datasets"):
        dataset_files(mixed, "refcoco")


# ------------------------------------------------------------------ RefCOCO / RefCOCO+ / RefCOCOg


def _ofa_bins(box, size, patch, max_image_size=512, num_bins=1000):
    """OFA's quantisation re-derived in numpy float32: resize ratio, / max_image_size, * (bins-1), half-even."""
    w, h = size
    ratio = np.array([patch / w, patch / h] * 2, dtype=np.float32)
    v = np.array(box, dtype=np.float32) * ratio / np.float32(max_image_size) * np.float32(num_bins - 1)
    return [int(x) for x in np.round(v)]


def test_box_bins_follow_ofa_at_480_and_512():
    box, size = (10.5, 20.25, 300.0, 320.0), SIZES[0]
    assert ofa_box_bins(box, size, 480, 512, 1000) == [20, 57, 562, 900] == _ofa_bins(box, size, 480)
    assert ofa_box_bins(box, size, 512, 512, 1000) == [21, 61, 599, 960] == _ofa_bins(box, size, 512)
    # a perfect prediction decodes back (in resized pixels) onto the box: IoU ~ 1 at 480
    pred = bins_to_box(ofa_box_bins(box, size, 480, 512, 1000), 512, 1000)
    resized = [box[0] * 480 / 500, box[1] * 480 / 333, box[2] * 480 / 500, box[3] * 480 / 333]
    assert iou(pred, resized) > 0.99


@pytest.mark.parametrize("name", ["refcoco", "refcocoplus", "refcocog"])
def test_refcoco_fields_as_ofa_produces_them(ofa, nano_tokenizer, name):
    tok = nano_tokenizer
    nb = len(bin_token_ids(tok))
    ds = _dataset(ofa[name], "refcoco", "val", tok)
    sources = [' which region does the text " the man on the left, holding a bat! " describe?',
               ' which region does the text " woman in red far right " describe?',
               ' which region does the text " small dog " describe?']
    for i, (uid, _, _, coord, k) in enumerate(REFCOCO_ROWS):
        item = ds[i]
        box = [float(v) for v in coord.split(",")]
        bins = _ofa_bins(box, SIZES[k], S, 512, nb)
        target = [bin_token_ids(tok)[b] for b in bins]
        assert item["id"] == uid
        assert item["source"].tolist() == _ids(tok, sources[i])
        assert item["labels"].tolist() == [*target, EOS] and item["decoder_input"].tolist() == [BOS, *target]
        assert item["ref"]["orig_box"] == box and item["ref"]["orig_size"] == SIZES[k]
        assert item["patch_image"].shape == (3, S, S)


# ------------------------------------------------------------------ SNLI-VE


def test_snli_ve_fields_as_ofa_produces_them(ofa, nano_tokenizer):
    tok = nano_tokenizer
    ds = _dataset(ofa["snli_ve"], "snli_ve", "dev", tok)
    expected = [("two dogs run.", " yes"), ("a cat sleeps", " no"), ("the dog is fast", " maybe")]
    for i, (hyp, ans) in enumerate(expected):
        item = ds[i]
        src = _ids(tok, f' can image and text1 " a dog is running in a field " imply text2 " {hyp} "?')
        tgt = encode_text(tok, ans)
        assert item["id"] == str(i) and item["source"].tolist() == src
        assert item["decoder_input"].tolist() == src[:-1] + tgt
        assert item["labels"].tolist() == [PAD] * (len(src) - 2) + tgt + [EOS]
        assert item["ref"] == ans.strip()


# ------------------------------------------------------------------ caption


def test_caption_fields_ids_and_files_as_ofa_produces_them(ofa, nano_tokenizer):
    tok = nano_tokenizer
    train = _dataset(ofa["caption"], "caption", "train", tok, expand_refs=True)
    assert len(train) == 3  # stage 1: one caption per row
    item = train[0]
    assert item["id"] == "0" and item["source"].tolist() == _ids(tok, " what does the image describe?")
    assert item["labels"].tolist() == encode_text(tok, " A man with a red helmet on a small moped on a dirt road") + [EOS]
    test = _dataset(ofa["caption"], "caption", "test", tok)
    assert [test[i]["id"] for i in range(2)] == ["184613", "403013"]  # column 1, OFA's selected_cols 1,4,2
    assert test[0]["ref"] == ["A man with a red helmet on a small moped on a dirt road",
                              "Man riding a motor bike on a dirt road"]
    coco = json.loads((ofa["caption"] / "test_caption_coco_format.json").read_text())
    assert {a["image_id"] for a in coco["annotations"]} == {int(test[i]["id"]) for i in range(2)}
    cached = load_plain_pickle(ofa["caption"] / "cider_cached_tokens" / "coco-valid-words.p")
    assert cached["ref_len"] == 5000.0 and cached["document_frequency"][("dirt", "road")] == 300.0
    assert type(cached["document_frequency"]) is dict  # the defaultdict is read as a plain dict


# ------------------------------------------------------------------ VQA


def test_ans2label_pickle_is_read_safely(ofa, tmp_path):
    assert load_answer_list(ofa["vqa"] / "trainval_ans2label.pkl") == list(ANS2LABEL)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "trainval_ans2label.pkl"
    bad.write_bytes(pickle.dumps({"yes": Evil()}))
    with pytest.raises(ValueError, match="builtins.print is not allowed"):
        load_answer_list(bad)
    bad.write_bytes(pickle.dumps({"yes": b"raw"}))
    with pytest.raises(ValueError, match="type bytes"):
        load_plain_pickle(bad)


def test_vqa_fields_weights_objects_and_unlisted_answers(ofa, nano_tokenizer):
    tok = nano_tokenizer
    ds = _dataset(ofa["vqa"], "vqa", "train", tok, add_object=True)
    assert ds.candidates == list(ANS2LABEL) and len(ds) == 3  # the out-of-list row is kept
    expected = [(" is the house short? object: house short sky", " no", 1.0),
                (" what color is the roof? object: roof  sky", " maroon", 0.9),  # OFA keeps the empty item
                (" how many windows? object: ", " 2", 1.0)]
    for i, (src_text, ans, conf) in enumerate(expected):
        item = ds[i]
        src, tgt = _ids(tok, src_text), encode_text(tok, ans)
        assert item["source"].tolist() == src and item["decoder_input"].tolist() == src[:-1] + tgt
        assert item["labels"].tolist() == [PAD] * (len(src) - 2) + tgt + [EOS]
        assert item["loss_weight"] == conf
    assert ds[1]["constraint_mask"].all()  # unlisted answer: trained without the trie constraint
    assert not ds[0]["constraint_mask"][-2].all()
    batch = collate_batch([ds[i] for i in range(3)])
    assert batch["loss_weights"].tolist() == pytest.approx([1.0, 0.9, 1.0])
    assert batch["ids"] == ["262148000", "262148001", "262148002"]
    assert "loss_weight" not in _dataset(ofa["vqa"], "vqa", "val", tok)[0]  # held-out losses stay unweighted


def test_confidence_weights_scale_each_rows_token_losses():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 7), torch.tensor([[4, 2, 1], [5, 6, 2]])
    per_row = [seq2seq_loss(logits[i:i + 1], target[i:i + 1], reduction="sum") for i in range(2)]
    weighted = seq2seq_loss(logits, target, weights=torch.tensor([0.3, 1.0]))
    assert float(weighted) == pytest.approx(float(0.3 * per_row[0] + per_row[1]) / 5)
    with pytest.raises(ValueError, match="weights"):
        seq2seq_loss(logits, target, weights=torch.ones(3))


# ------------------------------------------------------------------ one gpu-recipe step per dataset

RUN = {"device": "cpu", "amp": "none", "image_size": S, "num_workers": 0, "effective_batch_size": 2,
       "prompt_length": 2, "eval_every": None, "drop_path_rate": 0.1}


@pytest.fixture(scope="module")
def backbone(random_ofa_dir):
    return load_model(random_ofa_dir)


@pytest.mark.parametrize("name,task", [("refcoco", "refcoco"), ("refcocoplus", "refcoco"), ("refcocog", "refcoco"),
                                       ("snli_ve", "snli_ve"), ("caption", "caption"), ("vqa", "vqa")])
def test_one_gpu_recipe_step_on_ofa_layout(ofa, backbone, tmp_path, monkeypatch, name, task):
    from mmprompt.eval import metrics

    torch.set_num_threads(1)
    monkeypatch.setattr(metrics, "_java_available", lambda: False)  # the COCO metrics' JVM takes ~10 s a split
    r = tune(backbone, task, "prefix", profile="gpu", data_dir=ofa[name], steps=1, eval_examples=2, batch_size=2,
             progress=False, out_dir=tmp_path, recipe=RUN)
    val, tests = scored_splits(ofa[name], task)
    assert r.steps == 1 and list(r.metrics) == [val, *tests]
    if task == "vqa":
        assert r.metrics["test"]["accuracy"] is None  # dummy answers: predicted, not scored
        sub = json.loads((tmp_path / "vqa_test_submission.json").read_text())
        assert [s["question_id"] for s in sub] == [262148000, 262148001]
        assert all(s["answer"] in ANS2LABEL for s in sub)
    else:
        assert 0.0 <= r.score <= (10.0 if task == "caption" else 1.0)
    if task == "caption":  # validation: OFA's cached CIDEr frequencies; test: the COCO evaluation
        assert "cider_split_df" in r.metrics["val"] and "cider_split_df" not in r.metrics["test"]


# ------------------------------------------------------------------ python -m mmprompt.data.check


def test_check_command_reports_files_rows_and_missing_ones(ofa, tmp_path, capsys):
    from mmprompt.data.check import check_data_dir, main

    assert main([str(ofa["vqa"]), "--task", "vqa"]) == 0
    out = capsys.readouterr().out
    assert "5 candidate answers" in out and "2 of 3 target answers in the answer list" in out and "ready" in out
    assert main([str(ofa["caption"]), "--task", "caption", "--rows", "2"]) == 0
    assert "4 cached n-gram frequencies" in capsys.readouterr().out
    (tmp_path / "refcocoplus_val.tsv").write_bytes((ofa["refcocoplus"] / "refcocoplus_val.tsv").read_bytes())
    with open(tmp_path / "refcocoplus_val.tsv", "a") as f:
        f.write("9\t9\tbroken row\t1,2\tnot-base64!\n")
    report = check_data_dir(tmp_path, "refcoco", rows=10)
    assert report.dataset == "refcocoplus" and not report.ok and report.problems == 4  # train, testA, testB, val
    text = "\n".join(report.lines)
    assert "refcocoplus_train.tsv missing" in text and "line 4:" in text and "refcocoplus_data.zip" in text
    assert main([str(tmp_path), "--task", "refcoco"]) == 1


# ------------------------------------------------------------------ caption CIDEr-D with OFA's cached frequencies


def test_cider_d_matches_coco_and_takes_the_cached_frequencies(ofa, nano_tokenizer):
    from pycocoevalcap.cider.cider import Cider

    from mmprompt.data.cider_cache import load_cider_cache
    from mmprompt.eval.cider import cider_d

    preds = ["a man riding a bike on a road", "a woman cutting a cake", "two dogs play in the grass"]
    refs = [["a man rides a motor bike on a dirt road", "man on a bike"], ["a woman cuts a big cake"],
            ["dogs playing on grass", "two dogs in a field playing"]]
    coco, _ = Cider().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
    assert cider_d(preds, refs) == pytest.approx(coco, abs=1e-12)
    cache = load_cider_cache(ofa["caption"] / "cider_cached_tokens" / "coco-valid-words.p")
    cached = cider_d(preds, refs, cache)
    assert cached != pytest.approx(coco) and cached > 0
    val = _dataset(ofa["caption"], "caption", "val", nano_tokenizer, cider_cache=None)
    assert val.cider_cache is None
    kwargs = ofa_dataset_kwargs("caption", "val", ofa["caption"])
    assert kwargs["cider_cache"].name == "coco-valid-words.p" and "cider_cache" not in ofa_dataset_kwargs(
        "caption", "test", ofa["caption"])


def test_drop_worst_keeps_the_best_tokens_after_the_given_updates():
    from mmprompt.training.losses import Seq2SeqLoss
    from mmprompt.experiment.profiles import resolve_profile

    torch.manual_seed(1)
    logits, target = torch.randn(2, 5, 9), torch.randint(3, 9, (2, 5))
    per_token = torch.stack([seq2seq_loss(logits[b:b + 1, t:t + 1], target[b:b + 1, t:t + 1])
                             for b in range(2) for t in range(5)])
    kept = per_token.sort().values[:8]  # int(10 * 0.8) smallest
    assert float(seq2seq_loss(logits, target, drop_worst_ratio=0.2)) == pytest.approx(float(kept.mean()))
    loss = Seq2SeqLoss(label_smoothing=0.0, drop_worst_ratio=0.2, drop_worst_after=3)

    class Model(torch.nn.Module):
        def forward(self, **_):
            return logits

    batch = {"target_ids": target}
    loss.updates = 3
    assert float(loss(Model(), batch)) == pytest.approx(float(per_token.mean()))
    loss.updates = 4
    assert float(loss(Model(), batch)) == pytest.approx(float(kept.mean()))
    cap = resolve_profile("gpu", "caption", "finetune")
    assert (cap.drop_worst_ratio, cap.drop_worst_after) == (0.2, 2500)  # run_scripts/caption/train_caption_stage1.sh


def test_recipe_table_paper_default_and_ofas_script(backbone, monkeypatch, ofa):
    import mmprompt.experiment.tune as experiment
    from mmprompt.models.ofa.modeling import set_drop_path_rate
    from mmprompt.experiment.profiles import RECIPES, resolve_profile

    paper = resolve_profile("gpu", "refcoco", "prefix")
    assert (paper.prompt_length, paper.effective_batch_size, paper.lr_for("prefix")) == (64, 128, 0.03)
    assert (paper.drop_path_rate, paper.convention) == (0.2, "ofa")
    script = resolve_profile("gpu", "refcoco", "prefix", **RECIPES["ofa-refcoco-prefix-script"])
    assert (script.prompt_length, script.effective_batch_size, script.grad_accum(8), script.epochs) == (100, 1024, 8, 100)
    assert resolve_profile("gpu", "vqa", "prefix").add_object
    assert resolve_profile("gpu", "refcoco", "bitfit").lr_for("bitfit") == 1e-4  # in OFA's sweep
    seen = {}
    real_train = experiment.train

    def spy(model, data, cfg, **kw):
        seen["rates"] = [getattr(layer.drop_path, "rate", 0.0) for layer in model.encoder.layers]
        seen["accum"] = cfg.grad_accum
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(experiment, "train", spy)
    recipe = {**RUN, **RECIPES["ofa-refcoco-prefix-script"], "effective_batch_size": 2, "batch_size": 2,
              "image_size": S, "eval_every": None}  # the script, shrunk to one CPU step
    r = tune(backbone, "refcoco", "prefix", profile="gpu", data_dir=ofa["refcoco"], steps=1, eval_examples=1,
             test_splits=False, progress=False, recipe=recipe)
    n = len(backbone.model.encoder.layers)
    assert r.config["length"] == 100 and seen["accum"] == 1
    assert seen["rates"] == pytest.approx([0.2 * i / (n - 1) for i in range(n)])
    assert all(not hasattr(layer.drop_path, "rate") for layer in backbone.model.encoder.layers)  # a copy
    with pytest.raises(ValueError, match="ofa-refcoco-prefix-script"):
        tune(backbone, "refcoco", "prefix", profile="gpu", data_dir=ofa["refcoco"], recipe="ofa-script")
    with pytest.raises(ValueError, match="rate=1.5"):
        set_drop_path_rate(backbone.model, 1.5)
