"""Does a checkpoint see? Object listing on one-object validation scenes, scored word by word.

A checkpoint that places boxes well but names colours and shapes at chance cannot ground a referring
expression among several objects, whatever is tuned on top of it. :func:`perception` measures that
directly: it asks the pretraining "what are the objects in the image?" question on scenes with a single
object and compares the decoded ``<size> <colour> <shape> <bin>×4`` with the truth.

``python -m mmprompt.perception data/checkpoints/ofa-nano-small [--profile cpu] [--examples 200]``
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader, Subset

from mmprompt.backbones import load_model
from mmprompt.data import PretrainDataset, ensure_synthetic, split_path
from mmprompt.data.texts import parse_listing
from mmprompt.decoding import generate
from mmprompt.metrics import iou

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


@torch.no_grad()
def perception(backbone, data_dir=None, *, profile: str = "cpu", examples: int = 200,
               batch_size: int = 32) -> dict[str, float]:
    """Accuracy of size, colour, shape and box (IoU >= 0.5) in greedy object listings of the first
    ``examples`` one-object scenes of the pretraining validation split."""
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise ValueError(f"examples={examples!r}: must be an int >= 1")
    root = data_dir or ensure_synthetic(profile)
    ds = PretrainDataset(split_path(root, "pretrain", "val"), backbone.tokenizer, backbone.patch_image_size,
                         subtasks=["listing"], max_objects=1)
    if len(ds) == 0:
        raise ValueError(f"data_dir={str(root)!r}: its pretraining validation split has no one-object listing rows")
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
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--random-init", action="store_true", help="the same architecture with random weights")
    a = p.parse_args(argv)
    backbone = load_model(a.model, pretrained=not a.random_init)
    print(json.dumps(perception(backbone, profile=a.profile, examples=a.examples), indent=2))


if __name__ == "__main__":
    main()
