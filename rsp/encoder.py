"""The ViT encoder shared by both frames (docs/model.md#encoder): a standard pre-LN ViT built from timm's
`PatchEmbed` and `Block`, fixed sin-cos position embeddings, MAE's random masking.

Its 150 (S/16) parameter names are timm's, so `encoder_state_dict()` loads strictly into
`timm.create_model("vit_small_patch16_224", num_classes=0)` and gives the same features. Evaluation
builds this module alone (`ViTEncoder.from_state_dict`) and runs it on frames of any size: the
position embeddings are interpolated bicubically from the training grid to the frame's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from rsp.blocks import LayerNorm, sincos_pos_embed_2d

ENCODER_PREFIXES = ("patch_embed.", "blocks.", "norm.")
ENCODER_TOKENS = ("cls_token", "pos_embed")


def is_encoder_key(key: str) -> bool:
    return key in ENCODER_TOKENS or key.startswith(ENCODER_PREFIXES)


def heads_for_width(embed_dim: int) -> int:
    """Conventional head count of a ViT of this width (head dim 64): S 384->6, B 768->12, L 1024->16."""
    if embed_dim % 64:
        raise ValueError(
            f"cannot infer the number of attention heads for width {embed_dim} (not a multiple of 64); pass num_heads explicitly"
        )
    return embed_dim // 64


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample masking (docs/model.md#encoder). x (B, N, D) -> kept tokens (B, int(N(1-r)), D),
    mask (B, N) with 1 = removed, ids_restore (B, N) that undoes the shuffle."""
    B, N, D = x.shape
    keep = int(N * (1 - mask_ratio))
    noise = torch.rand(B, N, device=x.device)  # small is kept, large is removed
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
    mask = torch.ones(B, N, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


class ViTEncoder(nn.Module):
    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        # strict_img_size=False: evaluation feeds frames of other sizes (checked in _check_size).
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, strict_img_size=False)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)]
        )
        self.norm = LayerNorm(embed_dim)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def reset_pos_embed(self) -> None:
        self.pos_embed.data.copy_(sincos_pos_embed_2d(self.embed_dim, *self.grid_size)[None])

    def pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """(1, 1 + grid_h * grid_w, D): the stored embedding, bicubically resized when the grid differs."""
        if (grid_h, grid_w) == self.grid_size:
            return self.pos_embed
        gh, gw = self.grid_size
        patches = self.pos_embed[:, 1:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, D, gh, gw)
        patches = F.interpolate(patches.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(self.pos_embed.dtype)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def _check_size(self, imgs: torch.Tensor) -> tuple[int, int]:
        H, W = imgs.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size {p}; resize or crop to a multiple of {p}")
        return H // p, W // p

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float = 0.0):
        """imgs (B, 3, H, W) -> tokens (B, 1 + kept, D) after the final norm, mask, ids_restore
        (mask and ids_restore are None without masking)."""
        grid = self._check_size(imgs)
        pos = self.pos_embed_for(*grid)
        x = self.patch_embed(imgs) + pos[:, 1:]  # (B, N, D)
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N', D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked features of frames of any size divisible by the patch: (B, 1 + h*w, D)."""
        return self.forward_encoder(imgs)[0]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's keys only, in timm's naming (loads strictly into timm's ViT, num_classes=0)."""
        return {k: v for k, v in self.state_dict().items() if is_encoder_key(k)}

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], num_heads: int | None = None) -> ViTEncoder:
        """Build an encoder whose shape is read off `state_dict` (timm naming) and load it strictly.
        Keys that are not the encoder's must be dropped by the caller; missing keys raise."""
        missing = [k for k in ("patch_embed.proj.weight", "pos_embed", "cls_token", "norm.weight") if k not in state_dict]
        if missing:
            raise ValueError(
                f"not a ViT encoder state dict: missing {', '.join(missing)}; "
                f"found keys such as {', '.join(list(state_dict)[:8])}"
            )
        embed_dim, _, patch, _ = state_dict["patch_embed.proj.weight"].shape
        num_patches = state_dict["pos_embed"].shape[1] - 1
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid")
        depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        encoder = cls(side * patch, patch, embed_dim, depth, num_heads or heads_for_width(embed_dim), hidden / embed_dim)
        load_strict(encoder, state_dict, "encoder state dict")
        return encoder


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with an error that names every missing, unexpected and
    mis-shaped key and says what to do."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} in the file vs {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}"
            )
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:10]))
        raise ValueError(
            f"{source} does not match {type(module).__name__}: "
            + " | ".join(parts)
            + ". Check that the model name and settings match the checkpoint; nothing was loaded."
        )
    module.load_state_dict(state_dict, strict=True)
