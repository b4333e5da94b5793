"""Warm-start the ResNet of a nano OFA before multitask pretraining, as OFA starts from an ImageNet ResNet.

Trained from scratch together with the transformer, the nano ResNet learns where objects are but not
what they look like: the first shipped checkpoints placed single objects perfectly yet named colours and
shapes at chance (``python -m mmprompt.perception``). OFA never faced this, because its ResNet starts
from ImageNet-trained weights. The synthetic world's equivalent is this stage: the ResNet alone, with a
throw-away 1×1-conv head on its patch grid, learns for every grid cell whether an object's centre lies
in it and, if so, that object's colour (or "covered"), shape and size. The labels come from the
pretraining mixture's object listings, so no other data is needed. It takes about a minute on one core.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from mmprompt.core.progress import progress_bar

from mmprompt.core.checks import check_int
from mmprompt.core.modes import training_mode
from mmprompt.data import PretrainDataset
from mmprompt.data.texts import parse_listing
from mmprompt.data.world import COLOR_NAMES, SHAPES, SIZES
from mmprompt.models.ofa.position import patch_grid_size

#: Classes predicted per grid cell; "object" is 1 where an object's centre lies in the cell.
CLASSES: dict[str, tuple[str, ...]] = {
    "colour": (*COLOR_NAMES, "covered"), "shape": SHAPES, "size": SIZES, "object": ("no", "yes")}
IGNORE = -100


def cell_labels(listing: str, grid: int, num_bins: int) -> dict[str, torch.Tensor]:
    """Per-cell targets ``[grid, grid]`` (long) of an encoded object listing: each attribute at the cell of
    the object's box centre (:data:`IGNORE` elsewhere), and ``object`` 1/0 everywhere."""
    labels = {k: torch.full((grid, grid), IGNORE, dtype=torch.long) for k in ("colour", "shape", "size")}
    labels["object"] = torch.zeros((grid, grid), dtype=torch.long)
    for obj in parse_listing(listing):
        x0, y0, x1, y1 = obj["box"]
        col = min(int((x0 + x1 + 1) / 2 / num_bins * grid), grid - 1)
        row = min(int((y0 + y1 + 1) / 2 / num_bins * grid), grid - 1)
        for key in ("colour", "shape", "size"):
            if obj[key] in CLASSES[key]:
                labels[key][row, col] = CLASSES[key].index(obj[key])
        labels["object"][row, col] = 1
    return labels


class _Collate:
    def __init__(self, grid: int, num_bins: int):
        self.grid, self.num_bins = grid, num_bins

    def __call__(self, items: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = [cell_labels(it["ref"]["target"], self.grid, self.num_bins) for it in items]
        return (torch.stack([it["patch_image"] for it in items]),
                {k: torch.stack([lab[k] for lab in labels]) for k in CLASSES})


def _losses(head_out: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for key, names in CLASSES.items():
        out[key] = F.cross_entropy(head_out[:, start:start + len(names)], labels[key], ignore_index=IGNORE)
        start += len(names)
    return out


@torch.no_grad()
def _accuracy(resnet: nn.Module, head: nn.Module, loader: DataLoader) -> dict[str, float]:
    hits = {k: 0 for k in CLASSES}
    totals = dict(hits)
    for images, labels in loader:
        out, start = head(resnet(images)), 0
        for key, names in CLASSES.items():
            keep = labels[key] != IGNORE
            hits[key] += int((out[:, start:start + len(names)].argmax(1) == labels[key])[keep].sum())
            totals[key] += int(keep.sum())
            start += len(names)
    return {k: hits[k] / max(totals[k], 1) for k in CLASSES}


def warm_up_resnet(model, train: PretrainDataset, val: PretrainDataset, *, steps: int = 1000,
                   batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    """Train ``model.encoder.embed_images`` in place on the listings of ``train`` (a
    ``PretrainDataset`` restricted to ``subtasks=["listing"]``); returns steps, wall time, the last
    training losses and per-cell accuracies on (up to 512 rows of) ``val`` (None when it is empty).
    Nothing else in ``model`` changes."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        check_int(f"{name}", value, 1)
    for name, ds in (("train", train), ("val", val)):
        if ds.subtasks != ("listing",) or (name == "train" and len(ds) == 0):
            raise ValueError(f"{name}: need a PretrainDataset with subtasks=['listing'] (train non-empty), got "
                             f"subtasks={ds.subtasks!r} with {len(ds)} rows")
    resnet, cfg = model.encoder.embed_images, model.config
    collate = _Collate(patch_grid_size(cfg.patch_image_size), train.num_bins)
    head = nn.Conv2d(cfg.resnet_out_channels, sum(map(len, CLASSES.values())), 1)
    torch.manual_seed(seed)
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW([*resnet.parameters(), *head.parameters()], lr=lr, weight_decay=0.01)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        drop_last=len(train) > batch_size, generator=torch.Generator().manual_seed(seed))
    start, step, last = time.time(), 0, {}
    with training_mode(resnet, True), progress_bar(total=steps, desc="resnet warm-up", disable=not progress) as bar:
        while step < steps:
            for images, labels in loader:
                losses = _losses(head(resnet(images)), labels)
                opt.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                opt.step()
                step += 1
                last = {k: round(v.item(), 4) for k, v in losses.items()}
                bar.update(1)
                bar.set_postfix(loss=f"{sum(last.values()):.3f}")
                if step >= steps:
                    break
    val_loader = DataLoader(Subset(val, range(min(len(val), 512))), batch_size=batch_size, collate_fn=collate)
    with training_mode(resnet, False):
        accuracy = {k: round(v, 4) for k, v in _accuracy(resnet, head, val_loader).items()} if len(val) else None
    return {"steps": step, "wall_time_s": round(time.time() - start, 1), "last_losses": last,
            "val_accuracy": accuracy}
