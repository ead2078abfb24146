"""Weights in and out of RSP: timm ViTs and the reference implementation's checkpoints.

- Out (docs/model.md#interoperability): the encoder's state dict uses timm's names, so `export_timm_encoder(model)` loads
  strictly into `timm.create_model("vit_small_patch16_224", num_classes=0)` (base / large alike)
  and `timm_vit(model)` is that timm model, giving the same features. This is how RSP weights
  reach every ViT-based downstream tool.
- In (docs/model.md#interoperability): the reference writes `checkpoint-{epoch}.pth` = dict(model, optimizer, epoch,
  scaler, args), where `args` is a pickled argparse Namespace. Unpickling can run arbitrary code,
  so such files load only with an explicit `trust_pickle=True`; files that hold tensors and plain
  containers only (everything this project writes) load with `weights_only=True`.

Every load is strict: a missing, unexpected or mis-shaped key raises a ValueError that names it
(`rsp.encoder.load_strict`). Nothing loads with strict=False.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from core.filekind import TORCH_LEGACY, TORCH_ZIP, sniff
from rsp.architectures import MODELS
from rsp.checkpoint import CODE_MODULES, PickleRefused, load_weights_only
from rsp.config import ModelConfig
from rsp.encoder import ViTEncoder, is_encoder_key, load_strict
from rsp.model import RSP, create_model

REFERENCE_CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "scaler", "args")
# Wrappers that prefix every key: DistributedDataParallel ("module.") and the downstream
# evaluation code of the reference ("backbone."); docs/model.md#interoperability.
WRAPPER_PREFIXES = ("module.", "backbone.")  # DDP and DINO's MultiCropWrapper
log = logging.getLogger(__name__)
# The reference registers each model twice: `rsp_vit_small_patch16` and the same builder under
# `rsp_vit_small_patch16_dec512d8b`; its checkpoints may carry either name in args.model.
REFERENCE_NAME_SUFFIX = "_dec512d8b"


# --- out: timm --------------------------------------------------------------------------------


def export_timm_encoder(model: ViTEncoder) -> dict[str, torch.Tensor]:
    """The encoder's weights (detached CPU copies) under timm's names: they load strictly into a
    timm `VisionTransformer(num_classes=0)` of the same shape, e.g. `vit_small_patch16_224` for
    rsp_vit_small_patch16, and `torch.save` of the result reloads with weights_only=True."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.encoder_state_dict().items()}


def timm_vit(model: ViTEncoder) -> VisionTransformer:
    """A timm ViT (no classifier head) that carries `model`'s encoder weights, built from the
    encoder's own shape; `timm_vit(m).forward_features(x)` equals `m.forward_features(x)`."""
    first = model.blocks[0]
    vit = VisionTransformer(
        img_size=model.patch_embed.img_size,
        patch_size=model.patch_size,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=first.attn.num_heads,
        mlp_ratio=first.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=True,
        num_classes=0,
    )
    load_strict(vit, export_timm_encoder(model), "exported RSP encoder")
    return vit.eval()


# --- in: checkpoint files ---------------------------------------------------------------------


def load_torch_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """torch.load on the CPU with weights_only=True; a file that needs the full unpickler (the
    reference's, with its argparse Namespace) is read only when `trust_pickle` is True. Anything
    else fails with one line that says what the file is: missing, a directory, not a checkpoint
    (looks like text, an image, ...: core.filekind), or a damaged torch checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*.pt*") if p.is_file())[:5]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a file{hint}; pass checkpoint=PATH to a .pt/.pth file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of an existing .pt/.pth file")
    found = sniff(path)
    if found.kind not in (TORCH_ZIP, TORCH_LEGACY):
        raise ValueError(
            f"{path} is not a checkpoint (looks like {found.description}); pass checkpoint=PATH to a file written by "
            "torch.save (.pt/.pth)"
        )
    if found.kind == TORCH_ZIP and (damage := zip_damage(path)):
        raise ValueError(f"{path} is a damaged torch checkpoint ({damage}); copy or download it again")
    try:
        return load_weights_only(path)
    except PickleRefused as refused:
        if not trust_pickle or refused.name.split(".")[0] in CODE_MODULES:
            raise ValueError(str(refused)) from refused
        log.warning("loading %s with weights_only=False (trusted by the user)", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # a trusted pickle that still cannot be read is damaged
            raise ValueError(f"{path} is a damaged torch checkpoint ({_first_line(err2)}); copy or download it again") from err2
    except pickle.UnpicklingError as err:  # not a global weights_only refuses: the pickle itself is broken
        raise ValueError(f"{path} is a damaged torch checkpoint ({_first_line(err)}); copy or download it again") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is a damaged torch checkpoint, truncated or corrupted ({_first_line(err)}); copy or download it again"
        ) from err


def zip_damage(path: Path) -> str | None:
    """Why a torch zip checkpoint is damaged, or None. torch.load does not check the CRC32 that
    torch.save writes for every entry, so a file corrupted in the middle would load garbage weights;
    reading it once more here (~1 GB/s) catches that."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"truncated or corrupted: {err}"
    return f"its entry {bad} fails its CRC check: the file was corrupted after it was written" if bad else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """A checkpoint in the reference format (a dict with "model"), read with `load_torch_file`."""
    ckpt = load_torch_file(path, trust_pickle)
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a checkpoint in the reference format (a dict with keys "
            f"{', '.join(REFERENCE_CHECKPOINT_KEYS)}); found {found}. A bare state dict can be loaded "
            "with rsp.encoder.load_strict(model, state_dict, source)."
        )
    return dict(ckpt)


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's `module.` and DINO's / evaluation wrappers' `backbone.` from every key, in any
    order and however often they are nested."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def reference_model_config(args: argparse.Namespace | Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a reference run, from its checkpoint's command-line arguments, refusing
    arguments no loadable checkpoint can have."""
    values = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    missing = [k for k in ("model", "input_size") if k not in values]
    if missing:
        raise ValueError(
            f"checkpoint args lack {', '.join(missing)}, so the model cannot be rebuilt from them; "
            "pass model=create_model(...) to load_reference_checkpoint instead"
        )
    cfg = model_config_from_reference_args(values)
    if cfg.name not in MODELS:
        raise ValueError(
            f"checkpoint args.model ({values['model']!r}) is not a registered model; valid: {', '.join(sorted(MODELS))}"
        )
    if cfg.discrete == 0:
        # discrete=0 selects the reference's Gaussian branch, which crashes (docs/model.md#posterior-and-prior): no trained
        # checkpoint can have it, and our working Gaussian latent is parameterized differently.
        raise ValueError("checkpoint args.discrete is 0 (the reference's Gaussian latent); no such checkpoint can be loaded")
    return cfg


def model_config_from_reference_args(values: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig that the reference's main_pretrain_rsp.py arguments describe: --model (with
    or without REFERENCE_NAME_SUFFIX), --input_size, --norm_pix_loss, --mask_ratio, --noise-scale,
    --kl-scale, --kl-balance, --kl-freebit, --stoch, --discrete (argparse names; absent ones keep
    ModelConfig's defaults). Unchecked: `rsp.config.validate` judges the result."""
    defaults = ModelConfig()
    return ModelConfig(
        name=str(values["model"]).removesuffix(REFERENCE_NAME_SUFFIX),
        img_size=int(values["input_size"]),
        latent="discrete",
        mae_aux="shared",
        stoch=int(values.get("stoch", defaults.stoch)),
        discrete=int(values.get("discrete", defaults.discrete)),
        kl_scale=float(values.get("kl_scale", defaults.kl_scale)),
        kl_balance=float(values.get("kl_balance", defaults.kl_balance)),
        kl_freebit=float(values.get("kl_freebit", defaults.kl_freebit)),
        noise_scale=float(values.get("noise_scale", defaults.noise_scale)),
        mask_ratio=float(values.get("mask_ratio", defaults.mask_ratio)),
        norm_pix_loss=bool(values.get("norm_pix_loss", defaults.norm_pix_loss)),
    )


def load_reference_checkpoint(path: str | Path, trust_pickle: bool = False, model: RSP | None = None) -> RSP:
    """Load a reference-format checkpoint's `model` weights strictly into `model`, or into a model
    built from the checkpoint's `args` when none is given. Returns the model."""
    ckpt = read_checkpoint(path, trust_pickle)
    if model is None:
        if ckpt.get("args") is None:
            raise ValueError(f"{path} has no 'args' to rebuild the model from; pass model=create_model(...)")
        model = create_model(reference_model_config(ckpt["args"]))
    load_strict(model, strip_wrapper_prefixes(ckpt["model"]), f"checkpoint {path}")
    return model


def load_checkpoint_encoder(path: str | Path, trust_pickle: bool = False, num_heads: int | None = None) -> ViTEncoder:
    """The ViT encoder alone from a reference-format checkpoint (what downstream evaluation needs):
    the decoder, latent heads and mask token are dropped by name, the rest loads strictly. The head
    count comes from `num_heads`, else from the checkpoint's registered model, else from the width."""
    ckpt = read_checkpoint(path, trust_pickle)
    if num_heads is None and ckpt.get("args") is not None:
        num_heads = MODELS[reference_model_config(ckpt["args"]).name].num_heads
    state = strip_wrapper_prefixes(ckpt["model"])
    return ViTEncoder.from_state_dict({k: v for k, v in state.items() if is_encoder_key(k)}, num_heads)
