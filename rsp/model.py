"""The RSP model (docs/model.md), built from a registered architecture (rsp/architectures.py).

One shared ViT encoder encodes the current frame and a noisy copy of the future frame. A
posterior (both CLS tokens) and a prior (current CLS only) give a latent; a cross-attention decoder
predicts every patch of the clean future frame from the current frame's tokens plus one token made
from the posterior sample. A balanced, free-bits KL ties posterior and prior; an MAE loss on the
masked future frame goes through the same decoder.

    loss = L_future + kl_scale * max(KL_balanced, kl_freebit) + L_mae

Module names and registration order are the reference's, so state-dict keys, their order and
their shapes match it (and its checkpoints load strictly).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from core.schema import ConfigError
from rsp import latent
from rsp.architectures import MODELS, ModelSpec
from rsp.blocks import DecoderBlock, LayerNorm, sincos_pos_embed_2d
from rsp.config import ModelConfig
from rsp.encoder import ViTEncoder


@dataclass
class PriorInputs:
    """What the prior's logging-only decoder pass needs, detached: it can then run after (and
    outside) the training step, e.g. outside a torch.compile'd forward."""

    src_h: torch.Tensor  # (B, 1 + N, D) current-frame tokens
    prior_logits: torch.Tensor  # (B, logits) fp32
    target: torch.Tensor  # (B, N, p*p*3) the future frame's patch targets


@dataclass
class RSPOutput:
    loss: torch.Tensor  # scalar, the training objective
    pred: torch.Tensor  # (B, N, p*p*3) prediction of the future frame's patches (posterior sample)
    logs: dict[str, torch.Tensor]  # detached scalars: loss_post, loss_prior, kl_loss, kl_value, mae_loss
    prior_inputs: PriorInputs | None = None  # None for latent=none (no prior)


class RSP(ViTEncoder):
    def __init__(self, cfg: ModelConfig):
        spec = MODELS[cfg.name]
        super().__init__(cfg.img_size, spec.patch_size, spec.embed_dim, spec.depth, spec.num_heads, spec.mlp_ratio)
        self.cfg = cfg
        D, Dd = spec.embed_dim, spec.decoder_embed_dim
        num_patches = self.patch_embed.num_patches

        if cfg.latent != "none":
            width = latent.logits_size(cfg.latent, cfg.stoch, cfg.discrete)
            self.to_posterior = nn.Sequential(nn.Linear(2 * D, 2 * D), nn.ReLU(), nn.Linear(2 * D, width))
            self.to_prior = nn.Sequential(nn.Linear(D, 2 * D), nn.ReLU(), nn.Linear(2 * D, width))
        if cfg.mae_aux != "off":
            self.decoder_embed_mae = nn.Linear(D, Dd)
        self.decoder_embed_deter = nn.Linear(D, Dd)
        if cfg.latent != "none":
            self.decoder_embed_stoch = nn.Linear(latent.sample_size(cfg.latent, cfg.stoch, cfg.discrete), Dd)
        self._add_decoder("", spec, num_patches)
        if cfg.mae_aux == "separate":  # ablation: the MAE branch gets a decoder of its own
            self._add_decoder("mae_", spec, num_patches)
        self.initialize_weights()

    def _add_decoder(self, prefix: str, spec: ModelSpec, num_patches: int) -> None:
        """Register a decoder's parts as top-level attributes in the reference's order
        (mask_token, decoder_pos_embed, decoder_blocks, decoder_norm, decoder_pred), with `prefix`."""
        Dd = spec.decoder_embed_dim
        setattr(self, f"{prefix}mask_token", nn.Parameter(torch.zeros(1, 1, Dd)))
        setattr(self, f"{prefix}decoder_pos_embed", nn.Parameter(torch.zeros(1, num_patches + 1, Dd), requires_grad=False))
        blocks = [DecoderBlock(Dd, spec.decoder_num_heads, spec.mlp_ratio) for _ in range(spec.decoder_depth)]
        setattr(self, f"{prefix}decoder_blocks", nn.ModuleList(blocks))
        setattr(self, f"{prefix}decoder_norm", LayerNorm(Dd))
        setattr(self, f"{prefix}decoder_pred", nn.Linear(Dd, spec.patch_size**2 * 3))

    # --- initialization (docs/model.md#initialization) -------------------------------------------

    def initialize_weights(self) -> None:
        self.reset_pos_embed()
        decoder_pos = sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], *self.grid_size)[None]
        self.decoder_pos_embed.data.copy_(decoder_pos)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear on flattened patches
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cfg.mae_aux == "separate":
            self.mae_decoder_pos_embed.data.copy_(decoder_pos)
            nn.init.normal_(self.mae_mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    # --- targets and losses ---------------------------------------------------------------------

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3), patches row-major, channels last inside a patch."""
        p = self.patch_size
        B, C, H, W = imgs.shape
        x = imgs.reshape(B, C, H // p, p, W // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Patchified target; with norm_pix_loss each patch is standardized with its unbiased variance."""
        t = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        return t

    @staticmethod
    def reconstruction_loss(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        err = (pred.float() - target.float()) ** 2  # (B, N, p*p*3)
        if mask is None:
            return err.mean()
        per_patch = err.mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum()  # mean over removed patches only

    # --- decoder --------------------------------------------------------------------------------

    def _decode(self, memory: torch.Tensor, pre: str = "") -> torch.Tensor:
        """Queries = mask token + position embedding at every position (incl. CLS), attending to
        `memory` (B, M, Dd); `pre` names the decoder ("" main, "mae_" separate MAE decoder).
        Returns (B, N, p*p*3) with the CLS position dropped."""
        mask_token, pos = getattr(self, f"{pre}mask_token"), getattr(self, f"{pre}decoder_pos_embed")
        x = (mask_token + pos).expand(memory.shape[0], -1, -1)  # (B, 1 + N, Dd)
        for block in getattr(self, f"{pre}decoder_blocks"):
            x = block(x, memory)
        x = getattr(self, f"{pre}decoder_pred")(getattr(self, f"{pre}decoder_norm")(x))
        return x[:, 1:]

    def decode_future(self, src_h: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Future-frame prediction from src tokens (B, 1 + N, D) and a flat latent sample (B, S).
        The z token comes first and gets no position embedding (docs/model.md#decoder)."""
        memory = self.decoder_embed_deter(src_h) + self.decoder_pos_embed  # (B, 1 + N, Dd)
        if z is not None:
            memory = torch.cat([self.decoder_embed_stoch(z)[:, None], memory], dim=1)  # (B, 2 + N, Dd)
        return self._decode(memory)

    def decode_mae(self, h: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the visible tokens (B, 1 + kept, D): mask tokens fill the removed
        positions, the shuffle is undone, CLS re-prepended; that sequence is the memory."""
        h = self.decoder_embed_mae(h)  # (B, 1 + kept, Dd)
        B, N = ids_restore.shape
        pre = "mae_" if self.cfg.mae_aux == "separate" else ""  # else it shares the main decoder
        mask_token, pos = getattr(self, f"{pre}mask_token"), getattr(self, f"{pre}decoder_pos_embed")
        patches = torch.cat([h[:, 1:], mask_token.expand(B, N + 1 - h.shape[1], -1)], dim=1)  # (B, N, Dd)
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, h.shape[2]))
        memory = torch.cat([h[:, :1], patches], dim=1) + pos  # (B, 1 + N, Dd)
        return self._decode(memory, pre)

    # --- forward --------------------------------------------------------------------------------

    def _check_pair(self, src: torch.Tensor, tgt: torch.Tensor) -> None:
        """Training frames must have the training size: the decoder's position embedding is fixed."""
        side = self.cfg.img_size
        if src.shape != tgt.shape or src.dim() != 4 or tuple(src.shape[1:]) != (3, side, side):
            raise ValueError(
                f"src {tuple(src.shape)} and tgt {tuple(tgt.shape)} must both be (B, 3, {side}, {side}) "
                f"(model.img_size={side}); crop the frames to {side} px or build the model with that img_size"
            )

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, prior_generator: torch.Generator | None = None) -> RSPOutput:
        """src, tgt (B, 3, H, W) normalized frames x_t and x_{t+k}. With `prior_generator`, also
        decode a prior sample (drawn from that generator, no gradient) and log its loss: the
        reference computes it every step only for logging, so we compute it on logging steps."""
        cfg = self.cfg
        self._check_pair(src, tgt)
        target = self.target(tgt)  # (B, N, p*p*3)
        src_h = self.forward_encoder(src)[0]  # (B, 1 + N, D)
        logs: dict[str, torch.Tensor] = {}
        z = post_logits = prior_logits = None
        kl_term = torch.zeros((), device=src.device)
        if cfg.latent != "none":
            noisy = tgt + cfg.noise_scale * torch.randn_like(tgt)  # noise only on the posterior's input
            tgt_h = self.forward_encoder(noisy)[0]
            # The distributions and the KL run in fp32 even under bf16/fp16 autocast: a 32-way
            # softmax and a sum of 32 KL terms lose most of their precision in 8 mantissa bits.
            post_logits = self.to_posterior(torch.cat([src_h[:, 0], tgt_h[:, 0]], dim=-1)).float()  # (B, logits)
            prior_logits = self.to_prior(src_h[:, 0]).float()
            # nan_to_num only matters once training has diverged: sampling then still works and the
            # (non-finite) KL below reports the divergence through the loss.
            sampling_logits = torch.nan_to_num(post_logits)
            z = latent.rsample(sampling_logits, cfg.latent, cfg.stoch, cfg.discrete)  # (B, sample_size)
            kl_loss, kl_value = latent.balanced_kl(
                post_logits, prior_logits, cfg.latent, cfg.stoch, cfg.discrete, cfg.kl_balance, cfg.kl_freebit
            )
            kl_term = cfg.kl_scale * kl_loss
            logs.update(kl_loss=kl_loss.detach(), kl_value=kl_value.detach())
        pred = self.decode_future(src_h, z)
        loss_post = self.reconstruction_loss(target, pred)
        loss = loss_post + kl_term
        logs["loss_post"] = loss_post.detach()
        if cfg.mae_aux != "off":
            h, mask, ids_restore = self.forward_encoder(tgt, cfg.mask_ratio)
            mae_loss = self.reconstruction_loss(target, self.decode_mae(h, ids_restore), mask)
            loss = loss + mae_loss
            logs["mae_loss"] = mae_loss.detach()
        logs["loss"] = loss.detach()
        prior_inputs = None if prior_logits is None else PriorInputs(src_h.detach(), prior_logits.detach(), target.detach())
        out = RSPOutput(loss=loss, pred=pred, logs=logs, prior_inputs=prior_inputs)
        if prior_generator is not None:
            self.log_prior_loss(out, prior_generator)
        return out

    @torch.no_grad()
    def log_prior_loss(self, out: RSPOutput, generator: torch.Generator) -> None:
        """Add loss_prior to `out.logs`: decode a prior sample drawn from `generator` (no gradient,
        never touching the global RNG). A no-op without a prior (latent=none)."""
        if out.prior_inputs is None:
            return
        cfg, inputs = self.cfg, out.prior_inputs
        z_prior = latent.sample_with_generator(inputs.prior_logits, cfg.latent, cfg.stoch, cfg.discrete, generator)
        out.logs["loss_prior"] = self.reconstruction_loss(inputs.target, self.decode_future(inputs.src_h, z_prior))


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def create_model(name: str | ModelConfig, **overrides) -> RSP:
    """`create_model("rsp_vit_small_patch16", kl_scale=0.1)` or `create_model(ModelConfig(...))`.
    Raises ValueError naming every invalid field (unknown names list the valid ones)."""
    if isinstance(name, ModelConfig):
        cfg = name
        if overrides:
            raise ValueError("pass either a ModelConfig or keyword overrides, not both")
    else:
        valid = [f.name for f in fields(ModelConfig) if f.name != "name"]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"unknown model field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        cfg = ModelConfig(name=name, **overrides)
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems, what="model configuration")
    return RSP(cfg)
