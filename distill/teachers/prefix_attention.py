"""Attention for many short suffixes that share one long, already computed prefix.

A batch of inputs that all continue the same prompt prefix would normally copy the prefix's
keys and values once per row (and once more per query head group). Here the prefix K/V stay a
single (1, kv_heads, prefix, head_dim) tensor per layer, and the rows' new tokens are laid end
to end after it as one sequence: one fused SDPA call with a block mask (every token sees the
prefix, and within the new tokens only its own row, under the caller's per-row mask). Cost:
(batch·new) × (prefix + batch·new) scores per head, so keep batches moderate (the teacher caps
them at 64). Registered with transformers as `cascadekit_prefix`; when a forward pass carries
no `prefix_kv`, it is plain masked attention (used to compute the prefix itself).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "cascadekit_prefix"


def prefix_shared_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, q_heads, new, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, new, head_dim)
    value: torch.Tensor,  # (batch, kv_heads, new, head_dim)
    attention_mask: torch.Tensor | None,  # (batch, 1, new, new) bool, True = may attend
    scaling: float | None = None,
    dropout: float = 0.0,
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if prefix_kv is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise NotImplementedError(
            "shared-prefix scoring does not support sliding-window or soft-capped attention"
        )
    prefix_key, prefix_value = prefix_kv[module.layer_idx]  # (1, kv_heads, prefix, head_dim)
    batch, q_heads, new, head_dim = query.shape
    kv_heads = key.shape[1]
    n_prefix = prefix_key.shape[2]
    # all rows become one sequence: [prefix | row 0 | row 1 | ...]; a block mask keeps rows apart
    q = query.permute(1, 0, 2, 3).reshape(1, q_heads, batch * new, head_dim)
    k = torch.cat(
        [prefix_key, key.permute(1, 0, 2, 3).reshape(1, kv_heads, batch * new, head_dim)], 2
    )
    v = torch.cat(
        [prefix_value, value.permute(1, 0, 2, 3).reshape(1, kv_heads, batch * new, head_dim)], 2
    )
    mask = torch.zeros((batch * new, n_prefix + batch * new), dtype=torch.bool, device=query.device)
    mask[:, :n_prefix] = True
    own = (
        attention_mask[:, 0]
        if attention_mask is not None
        else torch.ones(batch, new, new, dtype=torch.bool, device=query.device)
    )
    for b in range(batch):
        rows = slice(b * new, (b + 1) * new)
        mask[rows, n_prefix + b * new : n_prefix + (b + 1) * new] = own[b]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[None, None], scale=scaling, enable_gqa=kv_heads != q_heads
    )  # (1, q_heads, batch*new, head_dim)
    return out.reshape(q_heads, batch, new, head_dim).permute(1, 2, 0, 3).contiguous(), None


AttentionInterface.register(NAME, prefix_shared_attention)
