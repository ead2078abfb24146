"""The reference's pretraining command, mapped onto the typed config in one place.

The RSP README's command works as written, with torchrun in place of the deprecated
torch.distributed.launch:

    torchrun --nproc_per_node=8 main_pretrain_rsp.py --batch_size 48 --accum_iter 4 \\
        --model rsp_vit_small_patch16 --epochs 400 --warmup_epochs 40 --data_path /data/kinetics400 \\
        --log_dir out --output_dir out --norm_pix_loss --repeated_sampling 2

This is a thin entry point over `rsp.train.train` (no second training loop): every flag below sets
one field of `rsp.config.TrainConfig` and defaults to it (`--noise_scale` 0.5: the paper's setting, and
the default of the reference's main_pretrain_rsp.py since its June 2024 commit 3a653e28; 0.1 before,
and in its RSP class: docs/model.md#noise-on-the-target-input). Differences from the reference, all
deliberate:
- `--output_dir` is the run directory; training always resumes from its newest valid checkpoint
  (exactly: RNG and data position included), so `--resume` and `--start_epoch` are only checked.
- Interrupting with SIGUSR2/SIGTERM stops at the next step with a checkpoint (exit status 3 means
  "stopped, run the same command again to continue").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from core.schema import ConfigError
from rsp.checkpoint import CheckpointError
from rsp.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
    validate,
)
from rsp.distributed import DistEnv
from rsp.interop import model_config_from_reference_args
from rsp.lifecycle import StopRequest, install_stop_signals
from rsp.train import NonFiniteLossError, ResumeError, train
from rsp.video import DataError

EXIT_STOPPED = 3


def build_parser() -> argparse.ArgumentParser:
    m, d, o = ModelConfig(), DataConfig(), OptimConfig()
    p = argparse.ArgumentParser("main_pretrain_rsp.py", description="RSP pretraining (reference-compatible flags)")
    add = p.add_argument
    # training
    add("--batch_size", type=int, default=64, help="videos per GPU per micro-step (effective: x accum_iter x #gpus)")
    add("--epochs", type=float, default=400, help="nominal epochs (pairs / videos; 400 with repeated_sampling 2 = 200 passes)")
    add("--accum_iter", type=int, default=1)
    add("--device", default="auto", choices=["auto", "cuda", "cpu"])
    add("--seed", type=int, default=0)
    add("--resume", default="", help="checked only: the run resumes from --output_dir's newest valid checkpoint")
    add("--start_epoch", type=int, default=0, help="ignored: the step is read from the checkpoint")
    add("--output_dir", default="./output_dir", help="run directory (checkpoints, metrics)")
    add("--log_dir", default=None, help="TensorBoard directory (default: <output_dir>/tb)")
    # model
    add("--model", default=m.name)
    add("--input_size", type=int, default=m.img_size)
    add("--norm_pix_loss", action="store_true", help="per-patch normalized pixel targets (the paper's setting)")
    add("--mask_ratio", type=float, default=m.mask_ratio)
    add("--noise_scale", "--noise-scale", type=float, default=m.noise_scale)
    add("--kl_scale", "--kl-scale", type=float, default=m.kl_scale)
    add("--kl_balance", "--kl-balance", type=float, default=m.kl_balance)
    add("--kl_freebit", "--kl-freebit", type=float, default=m.kl_freebit)
    add("--stoch", type=int, default=m.stoch)
    add("--discrete", type=int, default=m.discrete)
    # optimizer
    add("--weight_decay", type=float, default=o.weight_decay)
    add("--lr", type=float, default=None, help="absolute lr (default: blr x effective batch / 256)")
    add("--blr", type=float, default=o.blr)
    add("--min_lr", type=float, default=o.min_lr)
    add("--warmup_epochs", type=float, default=40)
    # data
    add("--data_path", default="/data/kinetics400")
    add("--max_distance", type=int, default=d.max_gap, help="largest frame gap")
    add("--repeated_sampling", type=int, default=d.repeated_sampling)
    add("--ratio", default="1.0", help="only 1.0 (the full labels file) is supported")
    add("--num_workers", type=int, default=6)
    add("--pin_mem", action="store_true", default=True)
    add("--no_pin_mem", action="store_false", dest="pin_mem")
    add("--prefetch_factor", type=int, default=2)
    # distributed: torchrun's environment is authoritative; accepted for command compatibility
    add("--world_size", type=int, default=1)
    add("--local_rank", "--local-rank", type=int, default=-1)
    add("--dist_on_itp", action="store_true")
    add("--dist_url", default="env://")
    # ours
    add("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    add("--checkpoint_every", type=int, default=CheckpointConfig().every_steps, help="optimizer steps between checkpoints")
    add("--total_steps", type=int, default=None, help="override the length in optimizer steps")
    add("--deterministic", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.ratio != "1.0":
        raise ConfigError([f"--ratio {args.ratio}: subsets are not supported; prepare a labels file for the subset instead"])
    return TrainConfig(
        model=model_config_from_reference_args(vars(args)),
        data=DataConfig(
            root=args.data_path,
            max_gap=args.max_distance,
            repeated_sampling=args.repeated_sampling,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            pin_memory=args.pin_mem,
            prefetch_factor=args.prefetch_factor,
        ),
        optim=OptimConfig(
            blr=args.blr,
            lr=args.lr,
            min_lr=args.min_lr,
            weight_decay=args.weight_decay,
            accum_iter=args.accum_iter,
        ),
        schedule=ScheduleConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, total_steps=args.total_steps),
        checkpoint=CheckpointConfig(every_steps=args.checkpoint_every),
        runtime=RuntimeConfig(seed=args.seed, precision=args.precision, device=args.device, deterministic=args.deterministic),
    )


def check_resume_flag(resume: str, output_dir: Path) -> None:
    if resume and Path(resume).resolve().parent != (output_dir / "checkpoints").resolve():
        raise ConfigError(
            [
                f"--resume {resume}: this trainer resumes from the run directory's own checkpoints "
                f"({output_dir / 'checkpoints'}), exactly; pass the --output_dir that holds it. To start from "
                "reference (epoch-granular) weights use rsp.interop instead."
            ]
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = DistEnv.from_environ()
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s",
    )
    output_dir = Path(args.output_dir)
    check_resume_flag(args.resume, output_dir)
    cfg = validate(config_from_args(args))  # before the stop handlers: a bad flag changes nothing
    stop = StopRequest()
    install_stop_signals(stop)
    result = train(cfg, env, output_dir, stop, tb_dir=Path(args.log_dir) if args.log_dir else None)
    return 0 if result.status == "finished" else EXIT_STOPPED


# Failures whose message names the flag, the file or the fix: one line on the terminal, no traceback.
USER_ERRORS = (ConfigError, DataError, ResumeError, CheckpointError, NonFiniteLossError)


def run_as_program(argv: Sequence[str] | None = None) -> int:
    """`main` as main_pretrain_rsp.py runs it: a known failure is one line on stderr and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
