"""Trainable-parameter report.

Parameters are grouped by what inserted them: ``prefix:<site>`` (``model.mmprompt_prefix``),
``shallow``, ``adapter``, ``lora``, and ``backbone`` for everything else. Tied parameters count
once. ``fraction`` = trainable / total (all parameters, method included); ``fraction_of_backbone`` =
trainable / backbone parameters, the paper's "~1 %" convention.
"""

from __future__ import annotations

import torch.nn as nn

from mmprompt.tuning.prefix import MODULE_NAME as PREFIX_MODULE
from mmprompt.tuning.shallow import MODULE_NAME as SHALLOW_MODULE


def parameter_group(name: str) -> str:
    """The report group of a parameter name."""
    if name.startswith(PREFIX_MODULE + ".encoders."):
        return "prefix:" + name.split(".")[2]
    if name.startswith(SHALLOW_MODULE + "."):
        return "shallow"
    dotted = f".{name}"
    if ".adapter." in dotted:
        return "adapter"
    if ".lora." in dotted:
        return "lora"
    return "backbone"


def count_parameters(model: nn.Module) -> dict:
    """{"trainable", "total", "backbone_total", "fraction", "fraction_of_backbone", "groups": {group:
    {"trainable", "total"}}} for ``model`` (tied parameters counted once)."""
    groups: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        group = groups.setdefault(parameter_group(name), {"trainable": 0, "total": 0})
        group["total"] += param.numel()
        if param.requires_grad:
            group["trainable"] += param.numel()
    trainable = sum(g["trainable"] for g in groups.values())
    total = sum(g["total"] for g in groups.values())
    backbone = groups.get("backbone", {}).get("total", 0)
    return {
        "trainable": trainable,
        "total": total,
        "backbone_total": backbone,
        "fraction": trainable / total if total else 0.0,
        "fraction_of_backbone": trainable / backbone if backbone else 0.0,
        "groups": dict(sorted(groups.items())),
    }


def format_parameter_table(counts: dict | nn.Module) -> str:
    """A plain-text table of :func:`count_parameters` (accepts the dict or a model)."""
    if isinstance(counts, nn.Module):
        counts = count_parameters(counts)
    rows = [("group", "trainable", "total")]
    rows += [(g, f"{v['trainable']:,}", f"{v['total']:,}") for g, v in counts["groups"].items()]
    rows.append(("all", f"{counts['trainable']:,}", f"{counts['total']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append(
        f"trainable: {100 * counts['fraction']:.3f}% of all, "
        f"{100 * counts['fraction_of_backbone']:.3f}% of the backbone"
    )
    return "\n".join(lines)
