"""Label-smoothed sequence cross-entropy with OFA's trie-constrained smoothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["MODEL_INPUT_KEYS", "Seq2SeqLoss", "batch_weight", "forward_logits", "seq2seq_loss"]

#: Batch keys passed to ``model(...)`` by the default loss (those present in the batch).
MODEL_INPUT_KEYS = ("input_ids", "patch_images", "patch_masks", "decoder_input_ids")


def seq2seq_loss(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    pad_id: int = 1,
    label_smoothing: float = 0.0,
    constraint_masks: torch.Tensor | None = None,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
    drop_worst_ratio: float = 0.0,
) -> torch.Tensor:
    """Label-smoothed cross-entropy of ``logits`` [B,T,V] against ``target_ids`` [B,T].

    Smoothing follows OFA (``adjust_label_smoothed_cross_entropy``): the target keeps
    ``1 - ε`` of the mass and each of the other *allowed* tokens gets ``ε / (n_allowed - 1)``.
    Without ``constraint_masks`` every vocabulary entry is allowed (``n_allowed = V``; note that
    ``torch.nn.functional.cross_entropy(label_smoothing=ε)`` instead gives every entry ``ε / V``).
    With ``constraint_masks`` (Bool [B,T,V], allowed next tokens) the other logits are set to
    -inf before the softmax; a position with a single allowed token carries no smoothing.
    Positions whose target is ``pad_id`` contribute nothing.

    ``reduction="mean"`` (default) divides the summed token losses by the number of non-pad
    target tokens (0 when there are none); ``"sum"`` returns the sum (OFA's criterion returns
    the sum and fairseq divides by the token count of the whole update; the training loop gets
    the same normalisation by weighting each micro-batch's mean by its token share).

    ``weights`` (float [B]) multiplies every token loss of row b by ``weights[b]`` before the reduction,
    which still divides by the unweighted token count: OFA's VQA criterion multiplies the log-probabilities
    of each row by its answer's confidence (``sample["conf"]``) the same way.

    ``drop_worst_ratio`` (OFA's ``--drop-worst-ratio``, caption stage 1) keeps only the
    ``int(N * (1 - ratio))`` target tokens with the smallest losses; the mean is over the kept tokens.
    """
    if logits.dim() != 3 or target_ids.shape != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} must be [B,T,V] and target_ids "
                         f"{tuple(target_ids.shape)} must be [B,T] with the same B,T")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r} is invalid; allowed: [0, 1)")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction={reduction!r} is invalid; allowed: 'mean' | 'sum'")
    if not 0.0 <= drop_worst_ratio < 1.0:
        raise ValueError(f"drop_worst_ratio={drop_worst_ratio!r} is invalid; allowed: [0, 1)")
    if weights is not None and tuple(weights.shape) != tuple(logits.shape[:1]):
        raise ValueError(f"weights {tuple(weights.shape)} must be [B] with B={logits.shape[0]}")
    if constraint_masks is not None and constraint_masks.shape != logits.shape:
        raise ValueError(f"constraint_masks {tuple(constraint_masks.shape)} must match logits "
                         f"{tuple(logits.shape)}")
    keep = target_ids.ne(pad_id)
    target = target_ids[keep]
    scores = logits[keep].float()  # [N, V]
    allowed = None
    if constraint_masks is not None:
        allowed = constraint_masks[keep].bool()
        if not bool(allowed.gather(1, target[:, None]).all()):
            raise ValueError("constraint_masks forbid a target token: every non-pad target must "
                             "be allowed at its position")
        scores = scores.masked_fill(~allowed, float("-inf"))
    lprobs = F.log_softmax(scores, dim=-1)
    loss = -lprobs.gather(1, target[:, None]).squeeze(1)
    if label_smoothing > 0.0 and target.numel() > 0:
        if allowed is None:
            smooth = -lprobs.sum(-1)
            n_allowed = torch.full_like(loss, float(scores.shape[-1]))
        else:
            smooth = -lprobs.masked_fill(~allowed, 0.0).sum(-1)
            n_allowed = allowed.sum(-1).to(loss.dtype)
        several = n_allowed > 1
        eps = torch.where(several, torch.full_like(loss, label_smoothing), torch.zeros_like(loss))
        eps_i = eps / (n_allowed - 1).clamp(min=1)
        # smooth includes the target itself, so the target's total weight is 1 - eps.
        loss = (1.0 - eps - eps_i) * loss + eps_i * smooth
    if weights is not None:
        loss = loss * weights.to(loss.dtype)[:, None].expand_as(keep)[keep]
    if drop_worst_ratio > 0.0 and loss.numel() > 0:
        loss = torch.topk(loss, k=int(loss.numel() * (1.0 - drop_worst_ratio)), largest=False).values
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / max(loss.numel(), 1)


def forward_logits(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Call ``model`` on the batch's model inputs and return the logits [B,T,V]."""
    out = model(**{k: batch[k] for k in MODEL_INPUT_KEYS if k in batch})
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected an object with .logits, "
                    "a tensor, or a tuple whose first item is the logits")


class Seq2SeqLoss:
    """Default ``loss_fn(model, batch)``: forward pass + :func:`seq2seq_loss` (token mean; a batch's
    ``loss_weights`` weight its rows, as OFA's VQA confidences do)."""

    def __init__(self, pad_id: int = 1, label_smoothing: float = 0.1, drop_worst_ratio: float = 0.0,
                 drop_worst_after: int = 0) -> None:
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing
        self.drop_worst_ratio, self.drop_worst_after = drop_worst_ratio, drop_worst_after
        self.updates = 0  # optimizer updates done so far (the training loop sets it, as fairseq's update_num)

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = forward_logits(model, batch)
        drop = self.drop_worst_ratio if self.updates > self.drop_worst_after else 0.0
        return seq2seq_loss(logits, batch["target_ids"], self.pad_id, self.label_smoothing,
                            batch.get("constraint_masks"), weights=batch.get("loss_weights"), drop_worst_ratio=drop)


def batch_weight(batch: Any, pad_id: int = 1) -> float:
    """Weight of a micro-batch in its update: non-pad target tokens, else the example count.

    The loop scales each micro-batch's mean loss by its share of the update's total weight, so
    accumulation and data parallelism reproduce one large batch's token mean exactly.
    """
    if isinstance(batch, Mapping):
        if isinstance(batch.get("target_ids"), torch.Tensor):
            return float(batch["target_ids"].ne(pad_id).sum())
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return float(value.shape[0])
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return float(batch[0].shape[0])
    if isinstance(batch, torch.Tensor) and batch.dim() > 0:
        return float(batch.shape[0])
    return 1.0
