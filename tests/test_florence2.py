"""Florence-2 adapter: Florence-2's conventions, the offline tiny checkpoint, datasets and batches."""

import json

import pytest
import torch

from mmprompt.data.boxes import iou
from mmprompt.data.synth import split_path
from mmprompt.models.florence2 import (
    NUM_LOC_BINS,
    TinyFlorence2Spec,
    box_to_loc_tokens,
    build_tiny_florence2,
    dequantize_box,
    ensure_tiny_florence2,
    load_florence2,
    loc_tokens_to_box,
    parse_phrase_grounding,
    model_inputs,
    quantize_box,
    save_tiny_florence2,
)
from mmprompt.experiment.florence2 import florence2_backbone

SPLITS = {"refcoco": "val", "caption": "val", "vqa": "val", "snli_ve": "dev"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_florence2(tmp_path_factory.mktemp("florence2") / "tiny")


@pytest.fixture(scope="module")
def backbone(tiny_dir):
    return florence2_backbone(tiny_dir)


def test_location_bins_follow_florence2_post_processor(backbone):
    post = backbone.processor.post_processor
    g = torch.Generator().manual_seed(0)
    for size in [(32, 32), (640, 480), (100, 300)]:
        xy = torch.rand(20, 4, generator=g) * torch.tensor([size[0], size[1], size[0], size[1]])
        boxes = torch.cat([xy[:, :2].minimum(xy[:, 2:]), xy[:, :2].maximum(xy[:, 2:])], dim=1)
        theirs = post.quantize(boxes, size).tolist()
        assert [quantize_box(b, size) for b in boxes.tolist()] == theirs
        centres = [dequantize_box(b, size) for b in theirs]
        assert [[int(c) for c in b] for b in centres] == post.dequantize(torch.tensor(theirs), size).tolist()
    assert quantize_box([-5, 0, 10_000, 32], 32) == [0, 0, NUM_LOC_BINS - 1, NUM_LOC_BINS - 1]


def test_grounding_target_is_parsed_by_florence2_post_processing(backbone):
    box, side = [3.2, 7.9, 20.5, 31.0], 32
    text = "</s><s>the red circle" + box_to_loc_tokens(box, side) + "</s>"
    parsed = backbone.processor.post_process_generation(
        text=text, task="<CAPTION_TO_PHRASE_GROUNDING>", image_size=(side, side)
    )["<CAPTION_TO_PHRASE_GROUNDING>"]
    ours = loc_tokens_to_box(text, side)
    assert parsed["labels"] == ["the red circle"]
    assert parsed["bboxes"] == [[int(c) for c in ours]]
    assert max(abs(a - b) for a, b in zip(ours, box)) <= side / NUM_LOC_BINS
    assert loc_tokens_to_box("<loc_1><loc_2><loc_3>", side) is None
    assert loc_tokens_to_box("<loc_1><loc_2><loc_3><loc_4>", side) is None  # no phrase: the processor reads none
    assert loc_tokens_to_box("the dog<loc_1><loc_2><loc_3>x<loc_4>", side) is None  # not consecutive
    two = "</s><s>a cat<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>a hat<loc_9><loc_9><loc_10><loc_10>"
    theirs = backbone.processor.post_process_generation(
        text=two, task="<CAPTION_TO_PHRASE_GROUNDING>", image_size=(side, side))["<CAPTION_TO_PHRASE_GROUNDING>"]
    ours = parse_phrase_grounding(two, side)
    assert [g["phrase"] for g in ours for _ in g["boxes"]] == theirs["labels"] == ["a cat", "a cat", "a hat"]
    assert [[int(c) for c in b] for g in ours for b in g["boxes"]] == theirs["bboxes"]
    assert loc_tokens_to_box(two, side) == ours[0]["boxes"][0]


def test_tiny_directory_loads_offline_like_a_checkpoint(tiny_dir, backbone):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json"} <= names
    model, processor = backbone.model, backbone.processor
    assert type(model).__name__ == "Florence2ForConditionalGeneration" and not model.training
    assert model.config.text_config._attn_implementation == "sdpa"
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert (gen["num_beams"], gen["no_repeat_ngram_size"], gen["forced_bos_token_id"]) == (3, 3, 0)
    tok = processor.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    locs = [tok.convert_tokens_to_ids(f"<loc_{i}>") for i in range(NUM_LOC_BINS)]
    assert locs == list(range(locs[0], locs[0] + NUM_LOC_BINS))
    assert tok.image_token_id == model.config.image_token_id == len(tok) - 1
    from PIL import Image

    enc = processor(text="<CAPTION>", images=Image.new("RGB", (50, 70), (200, 30, 30)), return_tensors="pt")
    assert int((enc["input_ids"] == tok.image_token_id).sum()) == TinyFlorence2Spec().image_tokens == 17
    assert tok.decode(enc["input_ids"][0, 17:]) == "<s>What does the image describe?</s>"
    assert enc["pixel_values"].shape == (1, 3, 32, 32)
    with torch.no_grad():
        out = model(**enc, decoder_input_ids=torch.tensor([[2, 0]]))
    assert out.logits.shape == (1, 2, model.config.text_config.vocab_size)


def test_same_spec_gives_same_model_and_tokenizer():
    (a, pa), (b, pb) = build_tiny_florence2(), build_tiny_florence2()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()
    c, _ = build_tiny_florence2(TinyFlorence2Spec(seed=1))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


@pytest.mark.parametrize("task", list(SPLITS))
def test_task_datasets_build_florence2_batches(backbone, tiny_synthetic, task):
    ds = backbone.make_dataset(task, split_path(tiny_synthetic, task, SPLITS[task]))
    assert len(ds) == 8
    tok = backbone.tokenizer
    item = ds[0]
    labels = item["labels"].tolist()
    assert labels[0] == tok.bos_token_id and labels[-1] == tok.eos_token_id
    assert item["decoder_input"].tolist() == [2, *labels[:-1]]
    source = tok.decode(item["source"])
    assert source.startswith("<image>" * 17 + "<s>") and source.endswith("</s>")
    target = tok.decode(labels[1:-1])
    # refcoco's generation budget comes from the prompt alone: the target plus an echo twice the phrase's length
    if task == "refcoco":
        n_phrase = len(tok(item["prompt"].split(">", 1)[1], add_special_tokens=False)["input_ids"])
        assert item["generation_budget"] == len(labels) + n_phrase
    else:
        assert item["generation_budget"] is None
    if task == "refcoco":
        assert source.endswith(f"Locate the phrases in the caption: {item['prompt'].split('>', 1)[1]}</s>")
        box = loc_tokens_to_box(target, ds.patch_image_size)
        assert iou(box, item["ref"]["box"]) > 0.95 and item["ref"]["image_size"] == 32
        assert not target.startswith("<loc_")  # the phrase comes first, as Florence-2 writes grounding
    elif task == "caption":
        assert source.endswith("What does the image describe?</s>") and target in item["ref"]
    elif task == "snli_ve":
        assert target in ("yes", "no", "maybe") and item["prompt"].startswith("Can image and text1")
    else:
        assert item["prompt"].endswith("?") and item["prompt"][0].isupper() and target in item["ref"]
    batch = ds.collater([ds[i] for i in range(3)])
    assert batch["task"] == task and batch["patch_masks"].all() and batch["patch_images"].shape == (3, 3, 32, 32)
    assert batch["attention_mask"].sum(1).tolist() == [len(ds[i]["source"]) for i in range(3)]
    assert batch["input_ids"].masked_select(batch["attention_mask"] == 0).eq(1).all()
    assert batch["decoder_prompt_lengths"].tolist() == [1, 1, 1]
    with torch.no_grad():
        explicit = backbone.forward_logits(batch)
        contract = backbone.model(**{k: batch[k] for k in ("input_ids", "patch_images", "patch_masks",
                                                          "decoder_input_ids")}).logits
    assert torch.equal(explicit, contract)  # the batch-contract keys reach the model
    assert explicit.shape[:2] == batch["target_ids"].shape


def test_patch_masks_without_image_are_refused(backbone, tiny_synthetic):
    ds = backbone.make_dataset("vqa", split_path(tiny_synthetic, "vqa", "val"))
    batch = ds.collater([ds[0], ds[1]])
    batch["patch_masks"][1] = False
    with pytest.raises(ValueError, match="patch_masks"):
        model_inputs(batch)
    with pytest.raises(ValueError, match="patch_masks"):
        backbone.model(input_ids=batch["input_ids"], patch_images=batch["patch_images"],
                       patch_masks=batch["patch_masks"], decoder_input_ids=batch["decoder_input_ids"])


def test_bad_sources_are_clear_errors(tmp_path, backbone, tiny_synthetic):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_florence2(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_florence2(tmp_path)
    from mmprompt.tuning.testing import tiny_bart

    tiny_bart().save_pretrained(tmp_path / "bart")
    with pytest.raises(ValueError, match="'bart' model; expected 'florence2'"):
        load_florence2(tmp_path / "bart")
    with pytest.raises(ValueError, match="task='pretrain'"):
        backbone.make_dataset("pretrain", split_path(tiny_synthetic, "pretrain", "val"))
    with pytest.raises(ValueError, match="image_size"):
        TinyFlorence2Spec(image_size=30)


def test_backbone_save_round_trips(backbone, tmp_path):
    saved = backbone.save(tmp_path / "copy")
    again = florence2_backbone(saved)
    x = {"input_ids": torch.tensor([[again.tokenizer.image_token_id] * 17 + [0, 50, 2]]),
         "patch_images": torch.zeros(1, 3, 32, 32), "decoder_input_ids": torch.tensor([[2, 0, 7]])}
    with torch.no_grad():
        assert torch.equal(again.forward_logits(x), backbone.forward_logits(x))
    assert again.tokenizer.get_vocab() == backbone.tokenizer.get_vocab()
    assert not list(tmp_path.glob(".copy.tmp-*"))  # the temporary directory was renamed into place


def test_ensure_builds_once_and_rebuilds_for_another_spec(tiny_dir, tmp_path):
    target = tmp_path / "cached"
    assert ensure_tiny_florence2(target) == target
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    ensure_tiny_florence2(target)
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp  # kept
    assert (target / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    ensure_tiny_florence2(target, TinyFlorence2Spec(seed=3))
    assert (target / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def _copy_without(src, dst, drop=()):
    import shutil

    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def test_real_checkpoint_loading_rules(tiny_dir, tmp_path, monkeypatch, caplog):
    import huggingface_hub

    from mmprompt import load_model
    from mmprompt.models.florence2 import GENERATION_DEFAULTS, load_florence2

    bare = _copy_without(tiny_dir, tmp_path / "bare", ["generation_config.json"])
    with caplog.at_level("WARNING"):
        model, _ = load_florence2(bare)
    gen = model.generation_config
    assert (gen.num_beams, gen.no_repeat_ngram_size, gen.forced_bos_token_id) == (3, 3, 0) == (
        GENERATION_DEFAULTS["num_beams"], GENERATION_DEFAULTS["no_repeat_ngram_size"], 0)
    assert "no generation_config.json" in caplog.text
    remote = _copy_without(tiny_dir, tmp_path / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["text_config"]["model_type"] = "florence2_language"
    cfg["auto_map"] = {"AutoConfig": "configuration_florence2.Florence2Config"}
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="remote-code.*florence-community/Florence-2-base"):
        load_florence2(remote)
    # hub ids: load_model agrees with load_florence2 (downloaded where there is network, a clear error offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: str(tiny_dir))
    assert type(load_model("florence-community/Florence-2-base").model).__name__ == "Florence2ForConditionalGeneration"

    def offline(repo_id):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download florence-community/Florence-2-base"):
        load_model("florence-community/Florence-2-base")


def test_grounding_targets_quantise_the_original_box(backbone, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from ofa_fixture_data import REFCOCO_ROWS, SIZES, make_ofa_data

    d = make_ofa_data(tmp_path)["refcoco"]
    ds = backbone.make_dataset("refcoco", d / "refcoco_val.tsv")
    post = backbone.processor.post_processor
    for i, (_, _, _, coord, k) in enumerate(REFCOCO_ROWS):
        box = [float(v) for v in coord.split(",")]
        target = backbone.tokenizer.decode(ds[i]["labels"][1:-1])
        expected = post.quantize(torch.tensor([box]), SIZES[k]).tolist()[0]  # the processor: original size
        assert target.endswith("".join(f"<loc_{b}>" for b in expected))
