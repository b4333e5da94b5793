import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from mmprompt.data.boxes import tokens_to_box
from mmprompt.data.collate import PretrainDataset, TaskDataset, collate_batch
from mmprompt.data.synth import split_path
from mmprompt.data.tokenizer import BOS, EOS, PAD, decode_ids
from mmprompt.data.tsv import TSVFormatError

S = 48


def _check_common(batch, B):
    ids, dec, tgt = batch["input_ids"], batch["decoder_input_ids"], batch["target_ids"]
    assert ids.dtype == dec.dtype == tgt.dtype == torch.long
    assert ids.shape[0] == dec.shape[0] == tgt.shape[0] == B and dec.shape == tgt.shape
    assert (ids[:, 0] == BOS).all()
    for row in ids.tolist():  # bos ... eos, then only pad
        end = row.index(EOS)
        assert PAD not in row[:end] and set(row[end + 1 :]) <= {PAD}
    assert ids.shape[1] == max(r.index(EOS) + 1 for r in ids.tolist())  # padded to the longest only
    for row in tgt.tolist():  # every target ends with eos followed by padding
        last = max(i for i, t in enumerate(row) if t != PAD)
        assert row[last] == EOS
    imgs = batch["patch_images"]
    assert imgs.dtype == torch.float32 and imgs.shape == (B, 3, S, S)
    assert imgs.min() >= -1.0 and imgs.max() <= 1.0 and imgs.std() > 0.05
    assert batch["patch_masks"].dtype == torch.bool and batch["patch_masks"].shape == (B,)
    assert len(batch["ids"]) == len(batch["refs"]) == B


def _batch(ds, n=4):
    return collate_batch([ds[i] for i in range(n)])


def test_refcoco_batch(tiny_synthetic, nano_tokenizer):
    ds = TaskDataset(split_path(tiny_synthetic, "refcoco", "val"), "refcoco", nano_tokenizer, S)
    b = _batch(ds)
    _check_common(b, 4)
    assert b["task"] == "refcoco" and "constraint_masks" not in b
    assert b["target_ids"].shape[1] == 5 and (b["decoder_input_ids"][:, 0] == BOS).all()
    assert b["decoder_prompt_lengths"].tolist() == [1, 1, 1, 1]
    for k, ref in enumerate(b["refs"]):
        assert ref["image_size"] == S and ref["orig_size"] == (128, 128)
        assert ref["box"] == pytest.approx([c * S / 128 for c in ref["orig_box"]])
        pred = tokens_to_box(decode_ids(nano_tokenizer, b["target_ids"][k]), S, 64)
        half_bin = S / 63 / 2
        assert all(abs(p - r) <= half_bin + 1e-6 for p, r in zip(pred, ref["box"]))
    assert decode_ids(nano_tokenizer, b["decoder_input_ids"][0, :1]) == ""


def test_snli_ve_batch_prev_output_and_constraints(tiny_synthetic, nano_tokenizer):
    ds = TaskDataset(split_path(tiny_synthetic, "snli_ve", "dev"), "snli_ve", nano_tokenizer, S)
    b = _batch(ds)
    _check_common(b, 4)
    cm = b["constraint_masks"]
    assert cm.dtype == torch.bool and cm.shape == (*b["target_ids"].shape, len(nano_tokenizer))
    for k in range(4):
        L = int(b["decoder_prompt_lengths"][k])
        src = b["input_ids"][k]
        n_src = int((src != PAD).sum())
        assert L == n_src - 1
        assert torch.equal(b["decoder_input_ids"][k, :L], src[:L])  # the source without eos
        tgt = b["target_ids"][k]
        assert (tgt[: L - 1] == PAD).all() and cm[k, : L - 1].all()
        answer = decode_ids(nano_tokenizer, tgt)
        assert answer.strip() == b["refs"][k] and b["refs"][k] in ("yes", "no", "maybe")
        for i in range(L - 1, len(tgt)):
            if tgt[i] != PAD:
                assert cm[k, i, tgt[i]]
                assert cm[k, i].sum() < len(nano_tokenizer)  # constrained
            else:
                assert cm[k, i].all()  # padding: unconstrained
    assert "can image and text1" in decode_ids(nano_tokenizer, b["input_ids"][0])
    plain = TaskDataset(split_path(tiny_synthetic, "snli_ve", "dev"), "snli_ve", nano_tokenizer, S,
                        prompt_type="none", add_premise=False)  # fmt: skip
    pb = _batch(plain)
    assert pb["decoder_prompt_lengths"].tolist() == [1] * 4
    assert decode_ids(nano_tokenizer, pb["input_ids"][0]).startswith(" does the image describe")


def test_caption_batch_and_expansion(tiny_synthetic, nano_tokenizer):
    path = split_path(tiny_synthetic, "caption", "train")
    ds = TaskDataset(path, "caption", nano_tokenizer, S)
    b = _batch(ds)
    _check_common(b, 4)
    assert all(len(r) == 5 for r in b["refs"])
    assert decode_ids(nano_tokenizer, b["input_ids"][0]) == " what does the image describe?"
    assert decode_ids(nano_tokenizer, b["target_ids"][0]).strip() == b["refs"][0][0]
    expanded = TaskDataset(path, "caption", nano_tokenizer, S, expand_refs=True)
    assert len(expanded) == 5 * len(ds)
    targets = [decode_ids(nano_tokenizer, expanded[i]["labels"]).strip() for i in range(5)]
    assert targets == b["refs"][0]


def test_vqa_batch(tiny_synthetic, nano_tokenizer):
    ds = TaskDataset(split_path(tiny_synthetic, "vqa", "test"), "vqa", nano_tokenizer, S)
    assert ds.candidates is not None and len(ds.candidates) == 25
    b = _batch(ds)
    _check_common(b, 4)
    assert "constraint_masks" in b and len(b["answer_scores"]) == 4
    for k in range(4):
        refs = b["refs"][k]
        assert len(refs) == 10
        answer = decode_ids(nano_tokenizer, b["target_ids"][k]).strip()
        assert answer == max(set(refs), key=refs.count) and b["answer_scores"][k][answer] == 1.0
    with_objects = TaskDataset(split_path(tiny_synthetic, "vqa", "test"), "vqa", nano_tokenizer, S, add_object=True)
    assert " object: " in decode_ids(nano_tokenizer, with_objects[0]["source"])


def test_vqa_candidates_required_and_checked(tmp_path, tiny_synthetic, nano_tokenizer):
    lone = tmp_path / "vqa_val.tsv"
    shutil.copy(split_path(tiny_synthetic, "vqa", "val"), lone)
    with pytest.raises(FileNotFoundError, match="trainval_ans2label.json"):
        TaskDataset(lone, "vqa", nano_tokenizer, S)
    assert len(TaskDataset(lone, "vqa", nano_tokenizer, S, constraints=False)) == 8
    with pytest.raises(TSVFormatError, match="not in the candidate answer list"):
        TaskDataset(lone, "vqa", nano_tokenizer, S, answers=["red"])
    few = TaskDataset(lone, "vqa", nano_tokenizer, S, answers=["zzz"], on_error="skip")
    assert len(few) == 0 and few.skipped == 8


def test_pretrain_batch_and_curriculum(tiny_synthetic, nano_tokenizer):
    path = split_path(tiny_synthetic, "pretrain", "train")
    ds = PretrainDataset(path, nano_tokenizer, S)
    assert len(ds) == 8
    items = [ds[i] for i in range(len(ds))]
    b = collate_batch(items)
    assert b["task"] == "pretrain" and len(b["subtasks"]) == 8
    for k, sub in enumerate(b["subtasks"]):
        assert b["patch_masks"][k] == (sub != "infill")
        if sub == "infill":
            assert (b["patch_images"][k] == 0).all()
        if sub == "grounding":
            assert len(b["refs"][k]["box"]) == 4
    assert sum(ds.subtask_counts().values()) == 8
    only = PretrainDataset(path, nano_tokenizer, S, subtasks=["listing", "caption"])
    assert set(only.subtask_counts()) <= {"listing", "caption"}
    one = PretrainDataset(path, nano_tokenizer, S, max_objects=1)
    assert len(one) + one.filtered == 8
    assert all(r.subtask == "infill" or r.num_objects == 1 for r in (one.record(i)[0] for i in range(len(one))))
    with pytest.raises(ValueError, match="subtasks"):
        PretrainDataset(path, nano_tokenizer, S, subtasks=["dance"])
    with pytest.raises(ValueError, match="max_objects"):
        PretrainDataset(path, nano_tokenizer, S, max_objects=0)


def test_dataloader_and_mixed_tasks(tiny_synthetic, nano_tokenizer):
    ds = TaskDataset(split_path(tiny_synthetic, "refcoco", "train"), "refcoco", nano_tokenizer, S)
    batches = list(DataLoader(ds, batch_size=3, collate_fn=collate_batch))
    assert [len(b["ids"]) for b in batches] == [3, 3, 2]
    ve = TaskDataset(split_path(tiny_synthetic, "snli_ve", "train"), "snli_ve", nano_tokenizer, S)
    with pytest.raises(ValueError, match="mix tasks"):
        collate_batch([ds[0], ve[0]])
    with pytest.raises(ValueError, match="empty"):
        collate_batch([])


def test_dataset_bad_inputs(tmp_path, tiny_synthetic, nano_tokenizer):
    path = split_path(tiny_synthetic, "refcoco", "val")
    with pytest.raises(ValueError, match="patch_image_size"):
        TaskDataset(path, "refcoco", nano_tokenizer, 0)
    with pytest.raises(ValueError, match="PretrainDataset"):
        TaskDataset(path, "pretrain", nano_tokenizer, S)
    with pytest.raises(ValueError, match="unknown task name"):
        TaskDataset(path, "refcocog", nano_tokenizer, S)
    with pytest.raises(ValueError, match="prompt_type"):
        TaskDataset(path, "refcoco", nano_tokenizer, S, prompt_type="src")
    with pytest.raises(FileNotFoundError):
        TaskDataset(tmp_path / "nope.tsv", "refcoco", nano_tokenizer, S)
    bad = tmp_path / "refcoco_bad.tsv"
    lines = path.read_text().splitlines()
    cols = lines[2].split("\t")
    lines.insert(2, "\t".join(cols[:2] + [cols[2], "0,0,500,10", cols[4]]))  # box outside the image
    lines.insert(5, "\t".join(cols[:4]))  # wrong column count
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TSVFormatError, match=r"refcoco_bad.tsv:3: .*outside"):
        TaskDataset(bad, "refcoco", nano_tokenizer, S)
    ds = TaskDataset(bad, "refcoco", nano_tokenizer, S, on_error="skip")
    assert len(ds) == 8 and ds.skipped == 2 and dict(ds.skip_reasons) == {"box": 1, "columns": 1}
    assert [ds[i]["id"] for i in range(8)] == [line.split("\t")[0] for line in path.read_text().splitlines()]
