"""Typed configuration of RSP pretraining: the single source of truth for every knob.

`rsp/` takes these dataclasses as plain values and never mutates them after validation;
`launch/` registers them in Hydra's ConfigStore and the YAML files under `experiments/` only
override their defaults. Each field states its unit and meaning.

Fields that cannot change the numbers a run produces (worker counts, log cadence, where
checkpoints go, ...) carry ``metadata=RUNTIME_ONLY`` (core/schema.py: the machinery every typed
config shares, including the fingerprint that identifies a run).

Validation collects every problem of every section and raises once (`ConfigError`); each message
names the key, the bad value, the rule and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.schema import ADDED_TO_IDENTITY, RUNTIME_ONLY, ConfigError, ignored, nonfinite
from rsp.architectures import MODELS
from rsp.decoders import DECODERS

LATENTS = ("discrete", "gaussian", "none")
MAE_AUX_MODES = ("shared", "separate", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SYNTHETIC_SCENES = ("shapes", "camouflage", "natural")  # the keys of rsp.synthetic.SCENES (kept light: no video imports here)
DEVICES = ("auto", "cpu", "cuda")
SEEK_POLICIES = ("auto", "sequential")
HOST_SYNC_MODES = ("auto", "every_step", "deferred")


@dataclass
class ModelConfig:
    """Architecture and loss of the RSP model (docs/model.md)."""

    name: str = "rsp_vit_small_patch16"  # a registered model: rsp.architectures.MODELS
    img_size: int = 224  # px, side of the square training crop
    latent: str = "discrete"  # discrete (DreamerV2 categorical) | gaussian | none (deterministic)
    mae_aux: str = "shared"  # MAE auxiliary loss: shared decoder | separate decoder | off
    stoch: int = 32  # number of latent variables
    discrete: int = 32  # classes per categorical variable (latent=discrete only)
    kl_scale: float = 0.01  # weight of the KL term in the total loss
    kl_balance: float = 0.2  # DreamerV2 balance: weight of KL(q || sg(p)); 1 - it for KL(sg(q) || p)
    kl_freebit: float = 0.1  # nats; the batch-mean KL is clamped below at this value
    noise_scale: float = 0.5  # std of Gaussian noise added to the normalized future frame (posterior input)
    mask_ratio: float = 0.75  # fraction of patches removed in the MAE branch
    norm_pix_loss: bool = True  # per-patch normalized pixel targets (the paper's setting)

    def problems(self) -> list[str]:
        out = []
        if self.name not in MODELS:
            out.append(f"model.name ({self.name!r}) is not a registered model; valid: {', '.join(sorted(MODELS))}")
        else:
            patch = MODELS[self.name].patch_size
            if self.img_size <= 0 or self.img_size % patch:
                out.append(
                    f"model.img_size ({self.img_size}) must be a positive multiple of the patch size "
                    f"({patch}) of {self.name}; use e.g. {max(patch, self.img_size // patch * patch)}"
                )
        if self.latent not in LATENTS:
            out.append(f"model.latent ({self.latent!r}) must be one of {', '.join(LATENTS)}")
        if self.mae_aux not in MAE_AUX_MODES:
            out.append(f"model.mae_aux ({self.mae_aux!r}) must be one of {', '.join(MAE_AUX_MODES)}")
        if self.latent == "none" and self.kl_scale != 0:
            out.append(
                f"model.kl_scale ({self.kl_scale}) must be 0 when model.latent=none (a deterministic model "
                "has no KL term); set model.kl_scale=0 or choose model.latent=discrete|gaussian"
            )
        if self.stoch < 1:
            out.append(f"model.stoch ({self.stoch}) must be >= 1 latent variable")
        if self.latent == "discrete" and self.discrete < 2:
            out.append(f"model.discrete ({self.discrete}) must be >= 2 classes for a categorical latent")
        for key in ("kl_scale", "kl_freebit", "noise_scale"):
            if getattr(self, key) < 0:
                out.append(f"model.{key} ({getattr(self, key)}) must be >= 0")
        if not 0.0 <= self.kl_balance <= 1.0:
            out.append(f"model.kl_balance ({self.kl_balance}) must lie in [0, 1]")
        if self.mae_aux != "off" and not 0.0 < self.mask_ratio < 1.0:
            out.append(
                f"model.mask_ratio ({self.mask_ratio}) must lie strictly between 0 and 1 while "
                f"model.mae_aux={self.mae_aux}; set model.mae_aux=off to drop the MAE branch"
            )
        return out + self.ignored_problems()

    def ignored_problems(self) -> list[str]:
        """Settings the chosen latent or MAE mode never reads (docs/model.md#ablations), refused when changed."""
        out = []
        if self.latent == "none":
            for key in ("stoch", "discrete", "kl_balance", "kl_freebit", "noise_scale"):
                out += ignored(
                    self,
                    "model",
                    key,
                    "model.latent=none has no latent",
                    f"drop model.{key} or choose model.latent=discrete|gaussian",
                )
        elif self.latent == "gaussian":
            out += ignored(
                self,
                "model",
                "discrete",
                "model.latent=gaussian has no classes",
                "drop model.discrete or set model.latent=discrete",
            )
        if self.mae_aux == "off":
            out += ignored(
                self,
                "model",
                "mask_ratio",
                "model.mae_aux=off has no MAE branch",
                "drop model.mask_ratio or set model.mae_aux=shared",
            )
        return out


@dataclass
class DataConfig:
    """Frame-pair sampling from videos (docs/data.md#frame-pair-sampling)."""

    root: str = ""  # dataset root (holds the labels file and the videos)
    labels: str = "auto"  # labels file relative to root; auto: ours, else the reference's pickle
    synthetic_videos: int = 0  # > 0: generate this many synthetic videos at root if it has no labels file
    # What generated videos show: rsp.synthetic.SCENES (shapes | camouflage | natural). Not part of a run's
    # identity: data.root is, and a root holds one scene (submit-time validation refuses another).
    synthetic_scene: str = field(default="shapes", metadata=RUNTIME_ONLY)
    # synthetic_scene=natural: more photographs / videos (files, or folders read one level deep) for the
    # clips to draw from, besides the installed ones (docs/learning.md#sources-and-licences).
    # Evaluation-only photographs are refused at submit time.
    natural_sources: list[str] = field(default_factory=list, metadata=RUNTIME_ONLY)
    repeated_sampling: int = 2  # frame pairs drawn per video and step (R)
    min_gap: int = 4  # frames, smallest distance between the two frames of a pair
    max_gap: int = 48  # frames, largest distance (inclusive)
    crop_min_scale: float = 0.5  # RandomResizedCrop area fraction, lower bound
    crop_max_scale: float = 1.0  # RandomResizedCrop area fraction, upper bound
    hflip_prob: float = 0.5  # probability of flipping both frames of a pair
    # pyav | torchcodec | decord (docs/data.md#decoding-and-seek-modes). Part of the run's identity: decoders (and the FFmpeg
    # builds under them) may convert colours differently, so the choice can change pixels
    decoder: str = "pyav"
    # cpu | cuda: where frames are decoded (docs/data.md#gpu-decoding). cuda decodes with torchcodec on the
    # GPU's video decoder (NVDEC) in the training process, and crops there: no loader workers, a fraction of
    # the host CPU per pair. Part of the run's identity when not cpu (GPU colour conversion and resizing round
    # differently); cpu is how every run made before the setting existed decoded, so their ids stay
    decode_device: str = field(default="cpu", metadata=ADDED_TO_IDENTITY)
    # auto: random access where `rsp.prepare labels` verified it for the file and decoder, else decoding
    # from the first frame | sequential: always the latter. Both give the same frames, so only speed changes
    seek: str = field(default="auto", metadata=RUNTIME_ONLY)
    batch_size: int = 64  # videos per process per micro-step (each yields repeated_sampling pairs)
    max_broken_fraction: float = 0.01  # stop the run when more than this share of reads fails
    # Submit-time check: refuse when more than this share of the videos with a known length are shorter than
    # max_gap + 1 frames (their pairs come from the short-video fallback, docs/data.md#frame-pair-sampling)
    max_short_fraction: float = field(default=0.05, metadata=RUNTIME_ONLY)
    num_workers: int = field(default=8, metadata=RUNTIME_ONLY)  # loader processes per rank
    prefetch_factor: int = field(default=2, metadata=RUNTIME_ONLY)  # batches prefetched per worker
    pin_memory: bool = field(default=True, metadata=RUNTIME_ONLY)

    def problems(self) -> list[str]:
        out = []
        if self.min_gap < 1:
            out.append(f"data.min_gap ({self.min_gap}) must be >= 1 frame")
        if self.max_gap < self.min_gap:
            out.append(
                f"data.max_gap ({self.max_gap}) must be >= data.min_gap ({self.min_gap}); "
                "raise data.max_gap or lower data.min_gap"
            )
        if self.repeated_sampling < 1:
            out.append(f"data.repeated_sampling ({self.repeated_sampling}) must be >= 1 pair per video")
        if not 0 < self.crop_min_scale <= self.crop_max_scale <= 1:
            out.append(
                f"data.crop_min_scale ({self.crop_min_scale}) and data.crop_max_scale ({self.crop_max_scale}) "
                "must satisfy 0 < min <= max <= 1"
            )
        if not 0 <= self.hflip_prob <= 1:
            out.append(f"data.hflip_prob ({self.hflip_prob}) must lie in [0, 1]")
        if self.batch_size < 1:
            out.append(f"data.batch_size ({self.batch_size}) must be >= 1 video per process")
        if self.decoder not in DECODERS:
            out.append(f"data.decoder ({self.decoder!r}) must be one of {', '.join(DECODERS)}")
        if self.decode_device not in ("cpu", "cuda"):
            out.append(f"data.decode_device ({self.decode_device!r}) must be cpu or cuda")
        elif self.decode_device == "cuda" and self.decoder != "torchcodec":
            out.append(
                f"data.decode_device=cuda decodes with torchcodec's GPU decoder, not {self.decoder}; "
                "set data.decoder=torchcodec or data.decode_device=cpu"
            )
        if self.seek not in SEEK_POLICIES:
            renamed = {"fast": "auto", "accurate": "sequential"}.get(self.seek)
            hint = f"; {self.seek!r} is now {renamed!r} (random access only where verified per file)" if renamed else ""
            out.append(f"data.seek ({self.seek!r}) must be one of {', '.join(SEEK_POLICIES)}{hint}")
        if not 0 <= self.max_broken_fraction < 1:
            out.append(f"data.max_broken_fraction ({self.max_broken_fraction}) must lie in [0, 1)")
        if not 0 <= self.max_short_fraction <= 1:
            out.append(f"data.max_short_fraction ({self.max_short_fraction}) must lie in [0, 1]")
        if self.num_workers < 0:
            out.append(f"data.num_workers ({self.num_workers}) must be >= 0")
        if self.synthetic_videos < 0:
            out.append(f"data.synthetic_videos ({self.synthetic_videos}) must be >= 0")
        if self.synthetic_scene not in SYNTHETIC_SCENES:
            out.append(f"data.synthetic_scene ({self.synthetic_scene!r}) must be one of {', '.join(SYNTHETIC_SCENES)}")
        if self.natural_sources and (self.synthetic_scene != "natural" or not self.synthetic_videos):
            out.append(
                f"data.natural_sources ({len(self.natural_sources)} entries) feed generated natural clips only; set "
                "data.synthetic_scene=natural and data.synthetic_videos=N, or drop data.natural_sources"
            )
        return out


@dataclass
class OptimConfig:
    """AdamW and the learning rate (docs/training.md#optimizer)."""

    blr: float = 1.5e-4  # base lr per 256 videos: lr = blr * effective batch (videos) / 256
    lr: float | None = None  # absolute lr; overrides blr when set
    min_lr: float = 0.0  # floor of the cosine decay
    weight_decay: float = 0.05  # on >= 2-D weights; biases and norms get 0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    accum_iter: int = 1  # micro-steps per optimizer step (no all-reduce on the others)
    clip_grad: float | None = None  # max global grad norm; None: no clipping (the paper)
    effective_batch: int | None = None  # videos per optimizer step the recipe expects (checked)

    def problems(self) -> list[str]:
        out = []
        if self.blr <= 0 and self.lr is None:
            out.append(f"optim.blr ({self.blr}) must be > 0 (or set optim.lr)")
        if self.lr is not None and self.lr <= 0:
            out.append(f"optim.lr ({self.lr}) must be > 0, or null to derive it from optim.blr")
        if self.min_lr < 0:
            out.append(f"optim.min_lr ({self.min_lr}) must be >= 0")
        elif self.lr is not None and self.min_lr > self.lr:  # the cosine would climb from lr to min_lr
            out.append(
                f"optim.min_lr ({self.min_lr}) must be <= optim.lr ({self.lr}): the schedule decays to it; lower optim.min_lr"
            )
        if self.accum_iter < 1:
            out.append(f"optim.accum_iter ({self.accum_iter}) must be >= 1")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            out.append(f"optim.beta1/beta2 ({self.beta1}, {self.beta2}) must lie in [0, 1)")
        if self.weight_decay < 0:
            out.append(f"optim.weight_decay ({self.weight_decay}) must be >= 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            out.append(f"optim.clip_grad ({self.clip_grad}) must be > 0, or null for no clipping")
        if self.effective_batch is not None and self.effective_batch < 1:
            out.append(f"optim.effective_batch ({self.effective_batch}) must be >= 1 or null")
        if self.lr is not None:
            out += ignored(
                self,
                "optim",
                "blr",
                f"optim.lr ({self.lr}) is set",
                "set optim.lr=null to derive the lr from optim.blr, or drop optim.blr",
            )
        return out


@dataclass
class ScheduleConfig:
    """Training length. Nominal epochs count pairs the paper's way: with repeated_sampling R, one
    pass over the videos is R nominal epochs (400 nominal = 200 passes). Converted to optimizer
    steps once, by `rsp.optim.resolve_schedule`."""

    epochs: float = 400.0  # nominal epochs
    warmup_epochs: float = 40.0  # nominal epochs of linear warmup
    total_steps: int | None = None  # optimizer steps; overrides epochs when set
    warmup_steps: int | None = None  # optimizer steps; overrides warmup_epochs when set

    def problems(self) -> list[str]:
        out = []
        if self.total_steps is None and self.epochs <= 0:
            out.append(f"schedule.epochs ({self.epochs}) must be > 0 (or set schedule.total_steps)")
        if self.total_steps is not None and self.total_steps < 1:
            out.append(f"schedule.total_steps ({self.total_steps}) must be >= 1 or null")
        if self.warmup_epochs < 0:
            out.append(f"schedule.warmup_epochs ({self.warmup_epochs}) must be >= 0")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            out.append(f"schedule.warmup_steps ({self.warmup_steps}) must be >= 0 or null")
        if self.total_steps is None and self.warmup_steps is None and self.warmup_epochs > self.epochs:
            out.append(f"schedule.warmup_epochs ({self.warmup_epochs}) must be <= schedule.epochs ({self.epochs})")
        if self.total_steps is not None and self.warmup_steps is not None and self.warmup_steps > self.total_steps:
            out.append(f"schedule.warmup_steps ({self.warmup_steps}) must be <= schedule.total_steps ({self.total_steps})")
        if self.total_steps is not None:
            fix = f"drop schedule.epochs, or set schedule.total_steps=null to train {self.epochs} nominal epochs"
            out += ignored(self, "schedule", "epochs", f"schedule.total_steps ({self.total_steps}) is set", fix)
        if self.warmup_steps is not None:
            fix = "drop schedule.warmup_epochs, or set schedule.warmup_steps=null to warm up by epochs"
            out += ignored(self, "schedule", "warmup_epochs", f"schedule.warmup_steps ({self.warmup_steps}) is set", fix)
        return out


@dataclass
class CheckpointConfig:
    """When checkpoints are committed and which are kept. Milestones are permanent and evaluated."""

    every_steps: int = field(default=500, metadata=RUNTIME_ONLY)  # optimizer steps between checkpoints
    keep_last: int = field(default=2, metadata=RUNTIME_ONLY)  # newest non-milestone checkpoints kept
    milestone_every_steps: int = field(default=0, metadata=RUNTIME_ONLY)  # 0: only the final step
    # Commit the initialization (step 0, before the first optimizer step) as a milestone: evaluated
    # like the others, so every result has its own untrained baseline; written once per run, never
    # by a resumed attempt.
    initial_milestone: bool = field(default=True, metadata=RUNTIME_ONLY)
    async_write: bool = field(default=True, metadata=RUNTIME_ONLY)  # write in a background thread

    def problems(self) -> list[str]:
        out = []
        if self.every_steps < 1:
            out.append(f"checkpoint.every_steps ({self.every_steps}) must be >= 1")
        if self.keep_last < 1:
            out.append(f"checkpoint.keep_last ({self.keep_last}) must be >= 1 (the resume point)")
        if self.milestone_every_steps < 0:
            out.append(f"checkpoint.milestone_every_steps ({self.milestone_every_steps}) must be >= 0")
        elif self.milestone_every_steps and self.every_steps >= 1 and self.milestone_every_steps % self.every_steps:
            out.append(
                f"checkpoint.milestone_every_steps ({self.milestone_every_steps}) must be a multiple of "
                f"checkpoint.every_steps ({self.every_steps}); milestones are checkpoints kept forever"
            )
        return out


@dataclass
class RuntimeConfig:
    """How the process runs: seed, device, precision, logging, failure detection."""

    seed: int = 0  # base seed; rank r seeds its model RNG with (seed, r)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 | fp16 (+ GradScaler)
    device: str = field(default="auto", metadata=RUNTIME_ONLY)  # auto | cpu | cuda
    deterministic: bool = field(default=False, metadata=RUNTIME_ONLY)  # torch deterministic algorithms
    # CPU threads per process; None: the CPUs this process may use / processes on its node. Bitwise
    # equality across runs also needs equal thread counts (they change float reduction order).
    cpu_threads: int | None = field(default=None, metadata=RUNTIME_ONLY)
    log_every_steps: int = field(default=10, metadata=RUNTIME_ONLY)  # optimizer steps between log lines
    watchdog_minutes: float = field(default=30.0, metadata=RUNTIME_ONLY)  # no step for this long: fail
    dist_timeout_minutes: float = field(default=10.0, metadata=RUNTIME_ONLY)  # collective/rendezvous timeout
    progress_bar: str = field(default="auto", metadata=RUNTIME_ONLY)  # auto (a TTY) | on | off
    # End an attempt after this many optimizer steps, with a checkpoint, as if asked to stop: the run
    # continues exactly on its next start (short debug queues; deterministic interruption in tests).
    stop_after_steps: int | None = field(default=None, metadata=RUNTIME_ONLY)
    # GPU options (docs/training.md#gpu-options). They change speed and the order of floating-point
    # operations, not what is trained: runtime-only like the device. Bitwise-equal resume needs the
    # same values on the same kind of device.
    compile: bool = field(default=False, metadata=RUNTIME_ONLY)  # torch.compile the training step (off until measured)
    tf32: bool = field(default=True, metadata=RUNTIME_ONLY)  # CUDA: fp32 matmuls and convolutions may use TF32
    # When the host reads a step's agreed values (losses, stop and non-finite flags): auto (deferred
    # on CUDA, every_step on the CPU) | every_step | deferred (one step late: the GPU never waits).
    host_sync: str = field(default="auto", metadata=RUNTIME_ONLY)

    def problems(self) -> list[str]:
        out = []
        if self.seed < 0:
            out.append(
                f"runtime.seed ({self.seed}) must be >= 0 (NumPy's SeedSequence takes no negative seed); use e.g. runtime.seed=0"
            )
        if self.precision not in PRECISIONS:
            out.append(f"runtime.precision ({self.precision!r}) must be one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            out.append(f"runtime.device ({self.device!r}) must be one of {', '.join(DEVICES)}")
        if self.log_every_steps < 1:
            out.append(f"runtime.log_every_steps ({self.log_every_steps}) must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            out.append(f"runtime.cpu_threads ({self.cpu_threads}) must be >= 1 or null")
        if self.watchdog_minutes <= 0:
            out.append(f"runtime.watchdog_minutes ({self.watchdog_minutes}) must be > 0")
        if self.dist_timeout_minutes <= 0:
            out.append(f"runtime.dist_timeout_minutes ({self.dist_timeout_minutes}) must be > 0")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            out.append(f"runtime.stop_after_steps ({self.stop_after_steps}) must be >= 1 or null")
        if self.progress_bar not in ("auto", "on", "off"):
            out.append(f"runtime.progress_bar ({self.progress_bar!r}) must be auto, on or off")
        if self.host_sync not in HOST_SYNC_MODES:
            out.append(f"runtime.host_sync ({self.host_sync!r}) must be one of {', '.join(HOST_SYNC_MODES)}")
        if self.precision == "fp16" and self.device == "cpu":
            out.append(
                "runtime.precision=fp16 with runtime.device=cpu: fp16 training needs loss scaling, which runs on CUDA "
                "here; use runtime.precision=fp32 or bf16 on the CPU"
            )
        return out


@dataclass
class TrainConfig:
    """Everything `rsp.train.train` needs, apart from where it runs (a `DistEnv`) and where it
    writes (a run directory)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def problems(self) -> list[str]:
        out = nonfinite(self)  # a RunConfig's cluster and evaluation sections too
        for section in ("model", "data", "optim", "schedule", "checkpoint", "runtime"):
            out += getattr(self, section).problems()
        stop, total = self.runtime.stop_after_steps, self.schedule.total_steps
        if stop is not None and total is not None and stop >= total:
            out.append(
                f"runtime.stop_after_steps ({stop}) is never reached before the run ends at schedule.total_steps ({total}), "
                "so it does nothing; lower it or drop it"
            )
        return out


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise `ConfigError` listing every problem of `cfg`; return it unchanged when there is none."""
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    return cfg
