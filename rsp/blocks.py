"""Transformer pieces of RSP that timm does not provide: fixed 2-D sin-cos position embeddings,
cross-attention, and the decoder block (cross-attention -> self-attention -> MLP).

Parameter names follow the reference code exactly (`cattn.kv`, `cattn.q`, `norm_kv1`, `norm3`,
`mlp2`, ...) so that its checkpoints load strictly. Attention goes through
`torch.nn.functional.scaled_dot_product_attention`; `fused_attn = False` selects the explicit
softmax(QK^T)V path, which the benchmark compares against.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # docs/model.md#architecture: every LayerNorm uses eps 1e-6


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(P,) positions -> (P, dim) as [sin(pos * w), cos(pos * w)], w_i = 1 / 10000^(i / (dim/2))."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (P, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """MAE's fixed 2-D embedding (docs/model.md#encoder): an all-zero first row for the CLS token, then the
    patches in row-major order, the first dim/2 channels encoding the column index and the last
    dim/2 the row index. Returns float32 (1 + grid_h * grid_w, dim)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols.flatten()), sincos_pos_embed_1d(dim // 2, rows.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0).float()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, H, N, d) tensors; `fused` uses torch SDPA."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
    return attn.softmax(dim=-1) @ v


class CrossAttention(nn.Module):
    """Multi-head attention from queries `x` to a separate key/value memory `kv`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cross-attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.fused_attn = True
        # Registration order kv -> q -> proj is the reference's; it fixes the state-dict key order.
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, Nq, C = x.shape
        Nk = memory.shape[1]
        head_dim = C // self.num_heads
        q = self.q(x).reshape(B, Nq, self.num_heads, head_dim).transpose(1, 2)  # (B, H, Nq, d)
        kv = self.kv(memory).reshape(B, Nk, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # (B, H, Nk, d) each
        out = attention(q, k, v, self.fused_attn)  # (B, H, Nq, d)
        return self.proj(out.transpose(1, 2).reshape(B, Nq, C))


class DecoderBlock(nn.Module):
    """x <- x + CrossAttn(norm1(x), norm_kv1(memory)); x <- x + SelfAttn(norm3(x));
    x <- x + MLP(norm4(x)) (docs/model.md#decoder; the reference's CSABlock)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.norm_kv1 = LayerNorm(dim)
        self.cattn = CrossAttention(dim, num_heads)
        self.norm3 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm4 = LayerNorm(dim)
        self.mlp2 = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.cattn(self.norm1(x), self.norm_kv1(memory))  # (B, Nq, C)
        x = x + self.attn(self.norm3(x))
        return x + self.mlp2(self.norm4(x))


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch every attention module of `model` (timm's and ours) between torch SDPA and the
    explicit softmax path. Returns the number of modules switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled
            switched += 1
    return switched
