import pytest
import torch

from mmprompt.data import PretrainDataset, ensure_synthetic, load_tokenizer, split_path
from mmprompt.models.ofa import OFAModel
from mmprompt.nano.vision_warmup import CLASSES, IGNORE, cell_labels, warm_up_resnet


def test_cell_labels_put_each_attribute_at_its_box_centre():
    labels = cell_labels("small red circle <bin_0> <bin_0> <bin_9> <bin_9> large covered star "
                         "<bin_40> <bin_50> <bin_63> <bin_63>", grid=4, num_bins=64)
    assert labels["colour"][0, 0] == CLASSES["colour"].index("red")
    assert labels["colour"][3, 3] == CLASSES["colour"].index("covered")
    assert labels["shape"][3, 3] == CLASSES["shape"].index("star") and labels["size"][0, 0] == 0
    assert int(labels["object"].sum()) == 2 and int((labels["colour"] != IGNORE).sum()) == 2


@pytest.fixture(scope="module")
def listings():
    root = ensure_synthetic("ci")
    tok = load_tokenizer(root / "tokenizer")
    return [PretrainDataset(split_path(root, "pretrain", s), tok, 96, subtasks=["listing"]) for s in ("train", "val")]


def test_warm_up_trains_only_the_resnet_and_learns(listings):
    torch.set_num_threads(1)
    model = OFAModel.from_preset("ofa-nano-small", seed=0, vocab_size=len(listings[0].tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = warm_up_resnet(model, *listings, steps=1, batch_size=16, progress=False)
    record = warm_up_resnet(model, *listings, steps=60, batch_size=16, progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("encoder.embed_images.") for k in changed)
    assert record["steps"] == 60 and sum(record["last_losses"].values()) < sum(first["last_losses"].values())
    assert record["val_accuracy"]["object"] > 0.8


def test_bad_input_is_rejected(listings):
    model = OFAModel.from_preset("ofa-nano-small", seed=0, vocab_size=len(listings[0].tokenizer))
    with pytest.raises(ValueError, match="steps=0"):
        warm_up_resnet(model, *listings, steps=0)
    whole = PretrainDataset(listings[1].path, listings[1].tokenizer, 96)
    with pytest.raises(ValueError, match="subtasks=None"):
        warm_up_resnet(model, listings[0], whole, steps=1)
