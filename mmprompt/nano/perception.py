"""Does a checkpoint see? Two probes on the pretraining validation split.

A checkpoint that places boxes well but names colours and shapes at chance cannot ground a referring
expression among several objects, whatever is tuned on top of it.

* :func:`perception` asks "what are the objects in the image?" on one-object scenes and scores the
  decoded ``<size> <colour> <shape> <bin>×4`` word by word;
* :func:`grounding_by_objects` decodes the box of each grounding row ("which region does the text
  describe?") and reports Acc@0.5 per number of objects in the scene: binding a phrase to one object
  among several shows as accuracy that stays above chance (1/n) as n grows.

``python -m mmprompt.perception data/checkpoints/ofa-nano-small [--profile cpu] [--examples 400]``
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader, Subset

from mmprompt.experiment.backbones import load_model
from mmprompt.data import PretrainDataset, bin_token_ids, ensure_synthetic, id_to_bin, split_path
from mmprompt.data.texts import parse_listing
from mmprompt.eval.decoding import generate, predict_boxes
from mmprompt.eval.metrics import iou

FIELDS = ("size", "colour", "shape", "box")


def score_object(predicted: str, gold: str) -> dict[str, float]:
    """1/0 per field of the first listed object (box: IoU of the bin boxes >= 0.5); an unparsable
    prediction scores 0 everywhere."""
    golds, preds = parse_listing(gold), parse_listing(predicted)
    if not golds:
        raise ValueError(f"gold={gold!r}: not an object listing '<size> <colour> <shape> <bin>x4'")
    g = golds[0]
    if not preds:
        return dict.fromkeys(FIELDS, 0.0)
    p = preds[0]
    out = {k: float(p[k] == g[k]) for k in ("size", "colour", "shape")}
    out["box"] = float(iou(p["box"], g["box"]) >= 0.5)
    return out


def _check_examples(examples: int) -> None:
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise ValueError(f"examples={examples!r}: must be an int >= 1")


def _val_rows(backbone, root, subtask: str, **kwargs) -> PretrainDataset:
    ds = PretrainDataset(split_path(root, "pretrain", "val"), backbone.tokenizer, backbone.patch_image_size,
                         subtasks=[subtask], **kwargs)
    if len(ds) == 0:
        raise ValueError(f"data_dir={str(root)!r}: its pretraining validation split has no usable {subtask} rows")
    return ds


@torch.no_grad()
def grounding_by_objects(backbone, data_dir=None, *, profile: str = "cpu", examples: int = 400,
                         batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Acc@0.5 (bin boxes, beam 1, bins only) of the first ``examples`` grounding rows of the
    pretraining validation split, per number of objects in the scene: ``{"1": {"acc": …, "n": …}, …}``."""
    _check_examples(examples)
    ds = _val_rows(backbone, data_dir or ensure_synthetic(profile), "grounding")
    tok, model = backbone.tokenizer, backbone.model.eval()
    hits: dict[str, list[float]] = {}
    start = 0
    rows = Subset(ds, range(min(examples, len(ds))))
    for batch in DataLoader(rows, batch_size=batch_size, collate_fn=ds.collater):
        boxes = predict_boxes(model, batch, lambda ids: [id_to_bin(tok, t) for t in ids], beam_size=1,
                              bin_token_ids=bin_token_ids(tok))
        for k, (box, target) in enumerate(zip(boxes, batch["target_ids"])):
            gold = [id_to_bin(tok, int(t)) for t in target[:4]]
            n = str(ds.record(start + k)[0].num_objects)
            hits.setdefault(n, []).append(float(None not in box and iou(box, gold) >= 0.5))
        start += len(boxes)
    return {n: {"acc": sum(v) / len(v), "n": len(v)} for n, v in sorted(hits.items())}


@torch.no_grad()
def perception(backbone, data_dir=None, *, profile: str = "cpu", examples: int = 400,
               batch_size: int = 32) -> dict[str, float]:
    """Accuracy of size, colour, shape and box (IoU >= 0.5) in greedy object listings of the first
    ``examples`` one-object scenes of the pretraining validation split."""
    _check_examples(examples)
    ds = _val_rows(backbone, data_dir or ensure_synthetic(profile), "listing", max_objects=1)
    subset = Subset(ds, range(min(examples, len(ds))))
    model = backbone.model.eval()
    scores: list[dict[str, float]] = []
    for batch in DataLoader(subset, batch_size=batch_size, collate_fn=ds.collater):
        hyps = generate(model, batch, beam_size=1, max_len=12)
        golds = [backbone.tokenizer.decode([t for t in row.tolist() if t > 2]) for row in batch["target_ids"]]
        scores += [score_object(backbone.tokenizer.decode(h.tokens), g) for h, g in zip(hyps, golds)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in FIELDS} | {"n": len(scores)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmprompt.perception", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="shipped name or checkpoint directory")
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    p.add_argument("--examples", type=int, default=400, help="rows per probe (at most)")
    p.add_argument("--random-init", action="store_true", help="the same architecture with random weights")
    a = p.parse_args(argv)
    backbone = load_model(a.model, pretrained=not a.random_init)
    report = {"listing": perception(backbone, profile=a.profile, examples=a.examples),
              "grounding_by_objects": grounding_by_objects(backbone, profile=a.profile, examples=a.examples)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
