"""OFA's position machinery: relative-position bucket tables and the absolute-position attention bias.

* Text relative positions are log-bucketed: distances up to ``bucket_size // 2`` keep their own bucket,
  longer ones share logarithmically wider buckets, giving ``2·bucket_size − 1`` buckets in all.
* Image relative positions are 2-D offsets on a ``bucket_size × bucket_size`` grid,
  ``(2·bucket_size − 1)² + 3`` buckets (three extra ones for a leading special position 0).
* The absolute-position bias is a dot product of projected, layer-normed position embeddings,
  ``(LN(p_q)·W_q + b_q)·(LN(p_k)·W_k + b_k)ᵀ · scaling``, computed once per forward and shared by all
  layers; the LN is applied by the caller.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def num_token_buckets(bucket_size: int) -> int:
    return 2 * bucket_size - 1


def num_image_buckets(bucket_size: int) -> int:
    return (2 * bucket_size - 1) ** 2 + 3


def token_bucket_positions(bucket_size: int, max_position: int) -> torch.Tensor:
    """Bucket index of every (query i, key j) pair, ``[max_position, max_position]`` (long).

    For ``d = i − j``: ``|d| ≤ m`` (``m = bucket_size // 2``) keeps ``d``; longer distances map to
    ``sign(d)·(m + ⌈log(|d|/m) / log((max_position − 1)/m) · (m − 1)⌉)``. The result is shifted by
    ``bucket_size − 1`` so it indexes a ``2·bucket_size − 1`` row table. The log term is evaluated in
    float32, exactly as OFA does, so the tables are bit-identical to the checkpoints' buffers.
    """
    pos = torch.arange(max_position)
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    dist = rel.abs()
    safe = dist.clamp(min=mid)  # the log is only used where dist > mid
    far = torch.log(safe / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    far = (torch.ceil(far) + mid).to(torch.long)
    bucket = torch.where(dist <= mid, rel, far * torch.sign(rel))
    return bucket + bucket_size - 1


def image_bucket_positions(bucket_size: int) -> torch.Tensor:
    """Bucket index of every (query, key) pair of image positions, ``[b² + 1, b² + 1]`` (long).

    Position ``p ≥ 1`` is the grid cell ``(row, col) = divmod(p − 1, b)``; the bucket of a pair is
    ``(Δrow + b − 1)·(2b − 1) + (Δcol + b − 1)`` with ``Δ = query − key``. Position 0 is special: row 0
    (query 0) uses bucket ``n − 3``, column 0 uses ``n − 2`` and the pair (0, 0) uses ``n − 1``, where
    ``n = (2b − 1)² + 3``.
    """
    cells = torch.arange(bucket_size * bucket_size)
    row, col = cells // bucket_size, cells % bucket_size
    d_row = row[:, None] - row[None, :] + bucket_size - 1
    d_col = col[:, None] - col[None, :] + bucket_size - 1
    n = num_image_buckets(bucket_size)
    table = torch.empty(cells.numel() + 1, cells.numel() + 1, dtype=torch.long)
    table[1:, 1:] = d_row * (2 * bucket_size - 1) + d_col
    table[0, :] = n - 3
    table[:, 0] = n - 2
    table[0, 0] = n - 1
    return table


def image_position_ids(height: int, width: int, bucket_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Position id of each patch of an ``height × width`` grid, row-major: ``row·bucket_size + col + 1``."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (rows * bucket_size + cols + 1).reshape(-1)


def patch_grid_size(pixels: int) -> int:
    """Side of the ResNet feature map for an input side of ``pixels`` (stem /4, then two stride-2 stages)."""
    size = pixels
    for _ in range(4):  # conv1 (stride 2, pad 3, k 7), maxpool (2, 1, 3), layer2, layer3 (stride 2, pad 1)
        size = (size + 1) // 2
    return size


def absolute_position_bias(
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    q_linear: nn.Linear,
    k_linear: nn.Linear,
    num_heads: int,
    scaling: float,
) -> torch.Tensor:
    """``[B, H, Tq, Tk]`` bias from (already layer-normed) position embeddings ``[B, Tq|Tk, d]``."""
    q = q_linear(query_pos)
    k = k_linear(key_pos)
    q = q.view(q.shape[0], q.shape[1], num_heads, -1).transpose(1, 2)
    k = k.view(k.shape[0], k.shape[1], num_heads, -1).transpose(1, 2)
    return torch.matmul(q * scaling, k.transpose(-1, -2))


def split_heads_key(key_pos: torch.Tensor, k_linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """Projected key-side positions ``[B, H, Tk, head_dim]`` (cacheable part of the cross bias)."""
    k = k_linear(key_pos)
    return k.view(k.shape[0], k.shape[1], num_heads, -1).transpose(1, 2)
