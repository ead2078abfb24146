"""The pretraining loop: DDP (gloo on CPU, nccl on GPU), gradient accumulation, mixed precision,
crash-safe checkpoints, exact resume and a cooperative stop.

Every start is a resume: `train()` looks for the newest valid checkpoint in the run directory and
continues from it bitwise exactly (model, optimizer, scaler, step, data position, every rank's RNG
state), or starts from step 0 when there is none, first committing the initialization as the
step-0 milestone (`checkpoint.initial_milestone`). Time is counted in optimizer steps.

Per optimizer step there is exactly one extra collective: a small all-reduce that carries the loss
parts (for logging), a non-finite flag (every rank raises together, none hangs), the stop flag
(every rank stops at the same step) and the broken-video counts (rsp.agreement). On CUDA the host
reads it one step late, so the GPU never waits for the host between steps; the GPU options
(precision, TF32, torch.compile, fused AdamW, DDP settings) are rsp.acceleration's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from core.provenance import code_version
from core.schema import diff, fingerprint, identity_dict, to_dict, without_runtime_only
from rsp import rng
from rsp.acceleration import (
    BatchTooLargeError,
    autocast,
    check_device_support,
    compile_step,
    device_settings,
    resolve_precision,
    wrap_ddp,
)
from rsp.agreement import StepReadback, StepValues, reduce_step, resolve_host_sync
from rsp.checkpoint import BackgroundCommitter, CheckpointStore, Manifest, cpu_snapshot, describe
from rsp.config import TrainConfig, validate
from rsp.data import EpochSampler, FramePairDataset, normalize_pairs
from rsp.distributed import (
    DistEnv,
    all_gather_objects,
    barrier,
    cpu_threads_per_process,
    init_process_group,
    resolve_device,
    shutdown,
)
from rsp.encoder import load_strict
from rsp.lifecycle import ProgressWatchdog, StopRequest
from rsp.loading import BrokenVideoBudget, make_loader
from rsp.metrics import MetricsLogger
from rsp.model import create_model
from rsp.optim import build_optimizer, load_optimizer_state, resolve_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised on every rank at the same step when any rank's loss is not finite."""


def nonfinite_hint(lr: float, precision: str) -> str:
    """What to change after a non-finite loss: the usual causes, with this run's values."""
    hint = f"The learning rate was {lr:.3g} at that step: lower optim.lr (or optim.blr)"
    if precision in ("fp16", "bf16"):
        hint += f", or train in runtime.precision=fp32 ({precision} overflows sooner)"
    return f"{hint}, or set optim.clip_grad to bound the updates"


class ResumeError(RuntimeError):
    """The run directory holds checkpoints this run must not (or cannot) continue from."""


@dataclass(frozen=True)
class TrainResult:
    status: str  # "finished" | "stopped" (stopped: resume me from `step`)
    step: int  # optimizer steps completed
    total_steps: int
    stop_reason: str | None = None
    resumed_from: int | None = None  # checkpoint step this attempt started from


@dataclass
class TrainHooks:
    # Rank 0, once the schedule is known: (start step, total steps).
    on_start: Callable[[int, int], None] | None = None
    # Rank 0, after a checkpoint is durable (may run on the checkpoint-writer thread).
    on_commit: Callable[[Manifest], None] | None = None
    # Rank 0, after every completed optimizer step (step count so far); keep it cheap.
    on_step: Callable[[int], None] | None = None
    # Rank 0 of a one-process run, before every optimizer step: (steps so far, a keep-alive for the
    # progress watchdog). May block: a local sweep's run pauses at a rung until it is decided. The
    # checkpoint of the steps so far is already on its way (the writer thread commits it meanwhile).
    before_step: Callable[[int, Callable[[], None]], None] | None = None


def train(
    cfg: TrainConfig,
    env: DistEnv,
    run_dir: str | Path,
    stop: StopRequest | None = None,
    hooks: TrainHooks | None = None,
    tb_dir: Path | None = None,
) -> TrainResult:
    """Train (or continue training) the run in `run_dir` until its last step or a stop request.
    TensorBoard events go to `tb_dir` (default: <run_dir>/tb)."""
    validate(cfg)
    device = resolve_device(cfg.runtime.device, env)
    check_device_support(cfg.runtime, device)  # before anything is loaded or written
    init_process_group(env, device, cfg.runtime.dist_timeout_minutes)
    try:
        with device_settings(cfg.runtime, device):
            trainer = Trainer(cfg, env, Path(run_dir), device, stop or StopRequest(), hooks or TrainHooks())
            return trainer.run(tb_dir)
    finally:
        shutdown()


class Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, run_dir: Path, device: torch.device, stop: StopRequest, hooks: TrainHooks):
        self.cfg, self.env, self.run_dir, self.device, self.stop, self.hooks = cfg, env, run_dir, device, stop, hooks
        torch.set_num_threads(cfg.runtime.cpu_threads or cpu_threads_per_process(env))
        seed = cfg.runtime.seed
        self.dataset = FramePairDataset(cfg.data, cfg.model.img_size, seed)
        self.sampler = EpochSampler(len(self.dataset), cfg.data.batch_size, env.rank, env.world_size, seed)
        self.loader = make_loader(self.dataset, self.sampler, cfg.data, seed)  # workers persist across epochs
        self.schedule = resolve_schedule(cfg, self.sampler.batches_per_epoch, env.world_size)
        self.config_hash = fingerprint(cfg, extra={"world_size": env.world_size})
        rng.seed_process(seed, rng.MODEL_INIT_STREAM)  # identical initial weights on every rank
        self.model = create_model(cfg.model).to(device)
        self.optimizer = build_optimizer(self.model, cfg, self.schedule.base_lr)
        self.precision = resolve_precision(cfg.runtime.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ddp = wrap_ddp(self.model, device) if env.distributed else None
        module = self.ddp or self.model
        self.step_module = compile_step(module) if cfg.runtime.compile else module  # forward (+ backward)
        self.host_sync = resolve_host_sync(cfg.runtime.host_sync, device)
        self.readback = StepReadback(self.host_sync)
        self.store = CheckpointStore(run_dir / "checkpoints")
        self.committer = BackgroundCommitter(self._after_commit)
        self.budget = BrokenVideoBudget(cfg.data.max_broken_fraction)
        self.counters = {"broken_videos": 0, "videos_read": 0}
        self.resumed_from = self._resume()
        self.step = self.resumed_from or 0

    # --- resume ---------------------------------------------------------------------------------

    def _resume(self) -> int | None:
        """Load the newest valid checkpoint (rank 0 verifies checksums and picks; all ranks load it)."""
        choice = None
        if self.env.is_main:
            manifests = self.store.manifests()
            self.store.clean_partial_writes(manifests)
            manifest, rejected = self.store.newest_valid(manifests)
            if manifest is None and rejected:
                choice = {"error": rejected}
            elif manifest is not None:
                choice = {"manifest": asdict(manifest)}  # the other ranks need not list the manifests again
        choice = all_gather_objects(choice, self.env)[0]
        if choice is None:
            rng.seed_process(self.cfg.runtime.seed, rng.TRAIN_STREAM, self.env.rank)
            return None
        if "error" in choice:
            raise ResumeError(
                f"{self.store.dir} holds checkpoints but none is valid: {'; '.join(choice['error'])}. "
                "Nothing was loaded or overwritten. Restore the files, or move the directory aside to start over."
            )
        manifest = Manifest(**choice["manifest"])
        self._load(manifest)
        if self.env.is_main:
            log.info("resumed from %s in %s", describe(manifest), self.store.dir)
        return manifest.step

    def _load(self, manifest: Manifest) -> None:
        path = self.store.dir / manifest.file
        state = self.store.load(manifest, map_location="cpu")
        if state["config_hash"] != self.config_hash:
            # only what the fingerprint covers: a changed runtime-only field never blocks a resume
            differences = diff(without_runtime_only(state["config"], TrainConfig), identity_dict(self.cfg))
            if state.get("world_size") != self.env.world_size:
                differences.append(f"world_size: {state.get('world_size')} != {self.env.world_size}")
            reason = "; ".join(differences) or "the fingerprints differ, the fields do not"
            raise ResumeError(
                f"{path} was written by a different configuration ({reason}); "
                "refusing to continue it with this one. Use the original configuration, or a new run directory."
            )
        load_strict(self.model, state["model"], str(path))
        self._check_optimizer_layout(state["optimizer"], path)
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        rng.restore(state["rng"][self.env.rank])
        self.counters = dict(state["counters"])

    def _check_optimizer_layout(self, saved: dict, path: Path) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        sizes = [len(g["params"]) for g in saved["param_groups"]]
        mine = [len(g["params"]) for g in self.optimizer.param_groups]
        problems = [f"parameter groups hold {sizes} tensors in the file vs {mine} here"] if sizes != mine else []
        for index, state in saved["state"].items():
            if index < len(params) and "exp_avg" in state and state["exp_avg"].shape != params[index].shape:
                problems.append(f"tensor {index}: {tuple(state['exp_avg'].shape)} vs {tuple(params[index].shape)}")
        if problems:
            raise ResumeError(f"{path}: optimizer state is for another parameter layout ({'; '.join(problems[:5])})")

    # --- data -----------------------------------------------------------------------------------

    def _batches(self, micro_step: int) -> Iterator[dict]:
        """Micro-batches from global micro-step `micro_step` on, across epoch boundaries."""
        epoch, offset = divmod(micro_step, self.sampler.batches_per_epoch)
        while True:
            self.sampler.set_position(epoch, offset)
            yield from self.loader
            epoch, offset = epoch + 1, 0

    # --- one optimizer step ---------------------------------------------------------------------

    def _train_step(self, batches: Iterator[dict], logging_step: bool) -> list[StepValues]:
        """Queue one optimizer step; return the values of the steps the host reads now (this
        one with host_sync=every_step, the previous one when deferred: rsp.agreement)."""
        cfg, env = self.cfg, self.env
        accum = cfg.optim.accum_iter
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(self.step)
        sums: dict[str, torch.Tensor] = {}
        broken = videos = 0
        waited = 0.0
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t0
            # uint8 (B * R, 3, S, S) crops travel; the device converts and normalizes them
            src = normalize_pairs(batch["src"].flatten(0, 1).to(self.device, non_blocking=True))
            tgt = normalize_pairs(batch["tgt"].flatten(0, 1).to(self.device, non_blocking=True))
            sync = self.ddp is None or micro == accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.precision, self.device):
                    out = self.step_module(src, tgt)
                    if logging_step:  # outside the (possibly compiled) step: its graph never depends on log cadence
                        seed = (cfg.runtime.seed, rng.PRIOR_LOG_STREAM, env.rank, self.step, micro)
                        self.model.log_prior_loss(out, rng.derived_generator(self.device, *seed))
                self.scaler.scale(out.loss / accum).backward()
            for key, value in out.logs.items():  # float64 on the device: no host sync, the host's float arithmetic
                part = value.to(torch.float64) / accum
                sums[key] = sums[key] + part if key in sums else part
            broken += batch["broken"]
            videos += batch["src"].shape[0]
            self.budget.record(batch["broken_paths"])
        grad_norm = self._finish_gradients(logging_step)
        pending = reduce_step(
            self.step + 1, logging_step, sums, self.stop.requested, broken, videos, grad_norm, waited, env, self.device
        )
        values = self.readback.push(pending)
        for done in values:
            self._absorb(done)  # raises on a non-finite loss before this step's update
        self.scaler.step(self.optimizer)  # fused AdamW takes the scaler's inf flag on the device: no sync
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return values

    def _finish_gradients(self, logging_step: bool) -> torch.Tensor | None:
        """Unscale, clip when configured, and measure the global grad norm on logging steps
        (a device scalar: read with the step's other values)."""
        clip = self.cfg.optim.clip_grad
        if clip is None and not logging_step:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _absorb(self, values: StepValues) -> None:
        """Act on a step's agreed values: every rank raises together on a non-finite loss; data counts."""
        if values.nonfinite_ranks:
            raise NonFiniteLossError(
                f"non-finite loss at step {values.step} on {values.nonfinite_ranks} rank(s), step {values.step - 1} the "
                "last completed: "
                + ", ".join(f"{k}={v:.6g}" for k, v in values.means.items())
                + f" (this rank: {', '.join(f'{k}={v:.6g}' for k, v in values.local.items())}); the last checkpoint is intact. "
                + nonfinite_hint(self.schedule.lr_at(values.step - 1), self.precision)
            )
        self.counters["broken_videos"] += values.broken
        self.counters["videos_read"] += values.read
        self.budget.check(self.counters["broken_videos"], self.counters["videos_read"])

    # --- checkpoints ----------------------------------------------------------------------------

    def _is_milestone(self, step: int) -> bool:
        if step == 0:
            return self.cfg.checkpoint.initial_milestone
        every = self.cfg.checkpoint.milestone_every_steps
        return step == self.schedule.total_steps or (every > 0 and step % every == 0)

    def _save(self, wait: bool) -> None:
        """All ranks hand in their RNG state; rank 0 snapshots and commits (in the background
        unless `wait`); the training loop goes on as soon as the snapshot is taken."""
        states = all_gather_objects(rng.capture(), self.env)
        if not self.env.is_main:
            return
        epoch, offset = divmod(self.step * self.cfg.optim.accum_iter, self.sampler.batches_per_epoch)
        payload = cpu_snapshot(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
        )
        payload.update(
            step=self.step,
            data_position={"epoch": epoch, "batch_in_epoch": offset},
            counters=dict(self.counters),
            rng=states,
            config=to_dict(self.cfg),
            config_hash=self.config_hash,
            world_size=self.env.world_size,
            model_name=self.cfg.model.name,
            code_version=code_version(),
        )
        commit = partial(self.store.commit, self.step, payload, milestone=self._is_milestone(self.step))
        if self.cfg.checkpoint.async_write and not wait:
            self.committer.submit(commit)
        else:
            self.committer.wait()
            self._after_commit(commit())

    def _after_commit(self, manifest: Manifest) -> None:
        removed = self.store.prune(self.cfg.checkpoint.keep_last)
        log.debug("committed %s; pruned %s", describe(manifest), removed)
        if self.hooks.on_commit is not None:
            try:
                self.hooks.on_commit(manifest)
            except Exception:  # a failing hook (e.g. eval submission) must not kill training
                log.exception("checkpoint hook failed for step %d", manifest.step)

    # --- the loop -------------------------------------------------------------------------------

    def run(self, tb_dir: Path | None = None) -> TrainResult:
        cfg, total = self.cfg, self.schedule.total_steps
        if self.env.is_main:
            log.info(
                "training %s: %d steps (%d per pass over %d videos), effective batch %d videos, lr %.3g, %s, world %d",
                cfg.model.name,
                total,
                self.schedule.steps_per_pass,
                len(self.dataset),
                self.schedule.effective_batch,
                self.schedule.base_lr,
                self.precision,
                self.env.world_size,
            )
            kernel = "fused" if self.optimizer.defaults.get("fused") else "per-parameter loop"
            log.info(
                "%s: tf32 %s, compile %s, host sync %s, AdamW %s",
                self.device,
                "on" if cfg.runtime.tf32 and self.device.type == "cuda" else "off",
                "on" if cfg.runtime.compile else "off",
                self.host_sync,
                kernel,
            )
        if self.env.is_main and self.hooks.on_start is not None:
            self.hooks.on_start(self.step, total)
        if self.resumed_from is None and cfg.checkpoint.initial_milestone:
            # The initialization as a milestone, taken before anything can change it. Only a fresh
            # start writes it: a resumed attempt (even one resumed from this very checkpoint) keeps
            # the original, so step 0 always means the weights this run started from. Written before
            # the first step (wait=True): the loader's worker processes fork at the first batch, and a
            # checkpoint writer thread running torch code at that moment can leave a lock it holds
            # locked forever in the child (seen as a worker whose results never arrive).
            self._save(wait=True)
        metrics = MetricsLogger(self.run_dir, self.env.is_main, self.step, total, cfg.runtime.progress_bar, tb_dir)
        pairs_per_step = self.schedule.effective_batch * cfg.data.repeated_sampling
        self.model.train()
        window = {"start": time.perf_counter(), "steps": 0, "wait": 0.0}
        start, stopped = self.step, None

        def report(done: list[StepValues]) -> str | None:
            """Log the steps the host has read; a stop one of them carries (all ranks see it at once)."""
            reason = None
            for values in done:
                window["steps"] += 1
                window["wait"] += values.data_wait
                if values.logging:
                    elapsed = time.perf_counter() - window["start"]
                    scalars = dict(values.means)
                    scalars.update(
                        lr=self.schedule.lr_at(values.step - 1),
                        grad_norm=values.grad_norm,
                        pairs_per_s=pairs_per_step * window["steps"] / elapsed,
                        data_wait_share=window["wait"] / elapsed,
                        broken_videos=float(self.counters["broken_videos"]),
                    )
                    metrics.log(values.step, scalars)
                    window.update(start=time.perf_counter(), steps=0, wait=0.0)
                if values.stop:
                    reason = self.stop.reason or "peer request"
            return reason

        try:
            with ProgressWatchdog(cfg.runtime.watchdog_minutes * 60) as watchdog:
                batches = self._batches(self.step * cfg.optim.accum_iter)
                while self.step < total:
                    if self.env.is_main and self.hooks.before_step is not None:
                        self.hooks.before_step(self.step, watchdog.kick)
                    logging_step = (self.step + 1) % cfg.runtime.log_every_steps == 0 or self.step + 1 == total
                    try:
                        done = self._train_step(batches, logging_step)
                    except torch.OutOfMemoryError as exc:
                        raise BatchTooLargeError.explain(cfg, self.device, self.precision, exc) from exc
                    self.step += 1
                    watchdog.kick()
                    if self.env.is_main and self.hooks.on_step is not None:
                        self.hooks.on_step(self.step)
                    stopped = report(done) or stopped
                    if not stopped and cfg.runtime.stop_after_steps and self.step - start == cfg.runtime.stop_after_steps:
                        stopped = "stop_after_steps"
                    if self.step % cfg.checkpoint.every_steps == 0 or self.step == total or stopped:
                        pending = self.readback.drain()  # a checkpoint holds only steps whose values were read
                        for values in pending:
                            self._absorb(values)
                        stopped = report(pending) or stopped
                        self._save(wait=bool(stopped) or self.step == total)
                        watchdog.kick()
                    metrics.advance(self.step)
                    if stopped:
                        break
                self.committer.wait()
        except BaseException:
            self.committer.settle()
            raise
        finally:
            metrics.close()
        barrier(self.env)
        if stopped:
            log.info("stopped at step %d/%d (%s); checkpoint committed, resume me", self.step, total, stopped)
            return TrainResult("stopped", self.step, total, stopped, self.resumed_from)
        return TrainResult("finished", self.step, total, None, self.resumed_from)
