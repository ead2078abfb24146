"""The callable that every rank of a pretraining job runs, pickled by submitit at submit time and
unpickled from the run's code snapshot.

It turns the scheduler's environment into a `DistEnv` (MASTER_ADDR from the allocation, a port that
cannot collide, published through the run directory), stops cooperatively on the stop request
that launch.start installed at the process's first instruction (SLURM; submitit's own handler
would checkpoint inside the handler), closes an earlier attempt that could not record its end
(launch.postmortem), records this attempt and its step log (launch.steplog), trains, and records
how the attempt ended and why (launch.postmortem.stop_reason). What happens next (requeue or not)
is `launch.requeue.decide`: run by the SLURM batch script's teardown, or here for the local backend.

A sweep's successive halving (launch/sweeps/rungs.py) prunes a run by writing its prune marker; rank 0
watches for it and turns it into the same cooperative stop (checkpoint, end "pruned", never
requeued, never counted as a failure).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import submitit

from core.atomicio import SpaceReserve, out_of_space
from launch.advance import advance, schedule_for_checkpoint
from launch.backends import backend_class
from launch.config import ClusterConfig, train_config
from launch.postmortem import close_unrecorded, scheduler_query, stop_reason
from launch.requeue import attempt_key, decide
from launch.rundir import Attempt, RunDirectory
from launch.runstate import reconcile
from launch.slurm_queries import total_cpus
from launch.steplog import StepLog, read_trace
from launch.sweeps.async_rungs import promoted_at
from launch.sweeps.pruned_jobs import PAUSED
from launch.sweeps.rungs import SweepDirectory, pause_reason
from rsp.checkpoint import DiskFullError, disk_full_message
from rsp.distributed import DistEnv, RendezvousError
from rsp.lifecycle import StopRequest, early_stop_request, install_stop_signals
from rsp.train import TrainHooks, train

log = logging.getLogger(__name__)

LOCAL_REQUEUE_EXIT = 144  # submitit's local controller restarts the tasks when one exits with it
PRUNE_POLL_S = 2.0  # how often rank 0 looks for the prune marker: one stat of a file
# What a collective raises on the surviving ranks when a peer rank died without a word (kill -9, the
# OOM killer, a node failure): gloo's transport errors (torch's RuntimeError text), NCCL's.
PEER_VANISHED = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited")
PAUSE_POLL_S = 1.0  # how often a run paused at a rung looks for the decision
RESERVE_FILE = ".space-reserve"  # rank 0 holds 1 MiB here while it trains: room to record a full disk


class PruneWatch:
    """Rank 0: request a cooperative stop once the run's prune marker exists (checked at once and
    then every PRUNE_POLL_S in a daemon thread). The stop flag travels to every rank with the
    step's all-reduce, so all ranks stop at the same step and checkpoint it."""

    def __init__(self, run: RunDirectory, stop: StopRequest):
        self.run, self.stop, self.done = run, stop, threading.Event()
        self.check()
        self.thread = threading.Thread(target=self._loop, name="prune-watch", daemon=True)
        self.thread.start()

    def check(self) -> bool:
        if self.run.is_pruned():
            self.stop.request("pruned")
            return True
        return False

    def _loop(self) -> None:
        while not self.done.wait(PRUNE_POLL_S):
            try:
                if self.check():
                    return
            except Exception:  # an unreadable marker must not kill the watch (a torn read on a network FS)
                log.exception("reading the prune marker of %s failed; trying again", self.run.path.name)

    def close(self) -> None:
        self.done.set()


class RungPause:
    """A local sweep's one-process run waits at a rung until the rung is decided, when the decision
    is coming (launch.sweeps.rungs.pause_reason): the CPU it would spend training past the rung goes to the
    evaluations the decision waits for, and a run the decision prunes stops right at the rung instead
    of training on until its marker is seen. Not on SLURM, where a paused job would hold its
    allocation idle, nor with several ranks (they would wait in a collective), nor in a sweep with
    more runs than cluster.array_parallelism lets run at once (a paused run would hold the slot a
    run the rung waits for needs). Waits at most `max_wait_s` per rung (the evaluation time limit);
    a stop request ends the wait at once."""

    def __init__(self, run: RunDirectory, stop: StopRequest, watch: PruneWatch, cluster: ClusterConfig, max_wait_s: float):
        self.run, self.stop, self.watch, self.max_wait_s = run, stop, watch, max_wait_s
        self.rungs: set[int] = set()
        for name in run.sweep_names():
            sweep = SweepDirectory(run.path.parent, name)
            selection = sweep.selection()
            if selection is not None and selection.promotion == "sync" and len(sweep.members()) <= cluster.array_parallelism:
                self.rungs.update(selection.rungs)

    def __call__(self, step: int, keepalive: Callable[[], None]) -> None:
        if step not in self.rungs:
            return
        started, told = time.monotonic(), False
        while not self.stop.requested:
            try:
                reason = pause_reason(self.run, step, running_locally)
            except Exception:  # a torn read of another run's files: never worth stopping the training
                log.exception("could not tell whether rung %d is coming; training on", step)
                break
            if reason is None:
                break
            if time.monotonic() - started > self.max_wait_s:
                log.warning("waited %.0f s at %s; training on undecided", self.max_wait_s, reason)
                break
            if not told:
                log.info("paused at step %d until the decision of %s", step, reason)
                told = True
            keepalive()
            time.sleep(PAUSE_POLL_S)
        if told:
            log.info("resumed at step %d after %.1f s", step, time.monotonic() - started)
        self.after_deciders()
        self.watch.check()  # pruned: the stop request travels with the next step, which ends the run

    def after_deciders(self) -> None:
        """A decider writes a rung's decision and then its prune markers under the sweep's lock
        (launch.sweeps.rungs.decide_due): taking that lock once after the decision appeared sees the
        markers too. Else, on a busy machine, a run the decision prunes trained on a step or two
        before its marker was written."""
        for name in self.run.sweep_names():
            with SweepDirectory(self.run.path.parent, name).lock():
                pass


class AsyncRungStop:
    """A run of an asynchronous sweep (select: {promotion: async}) stops at each rung it is not yet
    promoted at (launch/sweeps/async_rungs.py): before the rung's step it requests the cooperative
    stop with reason "paused", so every rank stops after that step and checkpoints it (the rung's
    milestone, whose evaluation is scheduled as usual); the attempt ends `paused` and frees its
    allocation. A rung where the run is promoted already (it resumed from an earlier checkpoint)
    is trained through. `promoted`: rung -> whether the run is promoted there now (asked at each
    rung's step, as the sweep's state changes meanwhile)."""

    def __init__(self, stop: StopRequest, rungs: set[int], promoted: Callable[[], dict[int, bool]]):
        self.stop, self.rungs, self.promoted = stop, rungs, promoted

    @classmethod
    def of(cls, run: RunDirectory, stop: StopRequest) -> AsyncRungStop | None:
        rungs = set(promoted_at(run))
        return cls(stop, rungs, partial(promoted_at, run)) if rungs else None

    def __call__(self, step: int, keepalive: Callable[[], None]) -> None:
        rung = step + 1
        if rung in self.rungs and not self.promoted().get(rung, False):
            log.info("pausing at step %d: not promoted at rung %d of its asynchronous sweep yet", rung, rung)
            self.stop.request(PAUSED)


def running_locally(run: RunDirectory) -> bool:
    """The job of `run`'s last submission lives (starting, training, or restarting after a requeue)."""
    return reconcile([run])[0].state == "running"


def allocation(cluster: ClusterConfig, is_slurm: bool) -> dict[str, int]:
    """What this attempt holds, all nodes together (cost accounting, launch/cost.py): SLURM's own
    numbers inside an allocation; elsewhere the request (tasks x cluster.cpus_per_task), which the
    local backend does not enforce."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", cluster.nodes)) if is_slurm else cluster.nodes
    gpus = int(os.environ.get("SLURM_GPUS_ON_NODE", cluster.gpus_per_node) or 0) * nodes if is_slurm else 0
    cpus = total_cpus(os.environ.get("SLURM_JOB_CPUS_PER_NODE", "")) if is_slurm else 0
    return {
        "gpus": gpus or cluster.gpus_per_node * cluster.nodes,
        "cpus": cpus or cluster.world_size * cluster.cpus_per_task,
    }


def reachable_address(host: str, is_slurm: bool) -> str:
    """An address of `host` the other ranks can connect to: DNS first, then SLURM's NodeAddr (fake
    or renamed nodes have a NodeAddr but no DNS entry)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        pass
    if is_slurm:
        for field in scheduler_query(["scontrol", "show", "node", host, "-o"]).split():
            if field.startswith("NodeAddr="):
                return field.split("=", 1)[1]
    raise RendezvousError(f"cannot resolve the first node of the allocation ({host}); no DNS entry and no NodeAddr")


def configure_logging(path: Path, rank: int) -> None:
    """Log to stderr and the attempt's rank log. The handlers of an earlier job in this interpreter
    (the debug backend runs a sweep's jobs one after another in the caller's) are removed first:
    kept, they wrote every later run's lines into that run's log file too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if getattr(h, "rank_log", False)]:
        root.removeHandler(earlier)
        earlier.close()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(path)):
        handler.setFormatter(fmt)
        handler.rank_log = True
        root.addHandler(handler)


@dataclass
class TrainingJob:
    run_dir: str
    backend: str  # local | slurm | debug: a name of launch.backends.BACKENDS, whose class says how its jobs differ

    def environment(self, run: RunDirectory) -> tuple[DistEnv, str, str, list[str]]:
        """(DistEnv, job id, attempt key, hosts) from submitit's view of the allocation."""
        if backend_class(self.backend).in_process:
            return DistEnv(), f"{self.backend}-{os.getpid()}", f"{self.backend}/{os.getpid()}", [socket.gethostname()]
        job = submitit.JobEnvironment()
        is_slurm = backend_class(self.backend).scheduler_environment
        hosts = list(job.hostnames) if is_slurm else ["127.0.0.1"]
        key = attempt_key(job.job_id) if is_slurm else f"{job.job_id}/{os.getppid()}"
        env = DistEnv(
            rank=job.global_rank,
            world_size=job.num_tasks,
            local_rank=job.local_rank,
            local_world_size=max(1, job.num_tasks // job.num_nodes),
            master_addr=reachable_address(hosts[0], is_slurm),
            rendezvous_file=str(run.path / "rendezvous" / f"{key.replace('/', '-')}.json"),
        )
        return env, job.job_id, key, hosts

    def __call__(self) -> dict:
        stop = self.stop_request()
        run = RunDirectory(self.run_dir)
        cfg = run.config()
        started = time.time()
        env, job_id, key, hosts = self.environment(run)
        configure_logging(run.path / "logs" / key.replace("/", "-") / f"rank_{env.rank}.log", env.rank)
        attempt, steps = self._begin(run, cfg.cluster, job_id, key, hosts, started) if env.is_main else (None, None)
        watch = PruneWatch(run, stop) if env.is_main else None
        hooks = TrainHooks()
        if env.is_main:
            hooks = TrainHooks(
                on_start=partial(self._on_start, run, attempt, steps),
                on_commit=self._milestone_hook(run, cfg),
                on_step=lambda step: steps.append(step, time.time()),
            )
            if backend_class(self.backend).pauses_at_rungs and env.world_size == 1 and run.sweep_names():
                hooks.before_step = RungPause(run, stop, watch, cfg.cluster, cfg.evaluation.time_minutes * 60)
            if not backend_class(self.backend).in_process and (async_stop := AsyncRungStop.of(run, stop)) is not None:
                hooks.before_step = async_stop
        if env.is_main and cfg.evaluation.tasks and run.manifests():
            self._schedule_evaluations(run, None)  # milestones an earlier attempt could not schedule
        reserve = SpaceReserve(run.path / RESERVE_FILE) if env.is_main else None
        try:
            result = train(train_config(cfg), env, run.path, stop, hooks)
        except BaseException as exc:
            if env.is_main:
                steps.close()
                trace = read_trace(run.step_log_path(attempt))
                reason = "interrupted" if peer_vanished(exc) else "crashed"
                error = _tail(disk_full(run, exc, reserve) or exc)
                run.end_attempt(attempt, reason, trace.last[0] if trace else attempt.start_step, exit_code=1, error=error)
                self._after_attempt(run, cfg.cluster)
            raise
        finally:
            if watch is not None:
                watch.close()
            if reserve is not None:
                reserve.release()
        reason = "finished" if result.status == "finished" else "stopped"
        if env.is_main:
            steps.close()
            if result.status != "finished" and stop.reason in ("pruned", PAUSED):
                reason = stop.reason  # a cooperative stop of ours: never requeued, never a failure
            elif result.status != "finished":
                why = stop.reason if stop.requested else result.stop_reason
                reason = stop_reason(attempt, cfg.cluster, self.backend, why, stop.received_at or time.time())
            run.end_attempt(attempt, reason, result.step, exit_code=0, stop_signal=stop.reason, stop_time=stop.received_at)
            if reason == "finished":
                run.set_status("finished", f"finished at step {result.step}")
                run.unprune(why=f"finished at step {result.step} before the prune marker could stop it")
            if reason == PAUSED:
                self._pause(run, result.step)
            self._after_attempt(run, cfg.cluster)
        return {"status": result.status, "reason": reason, "step": result.step, "total_steps": result.total_steps}

    def stop_request(self) -> StopRequest:
        """The process's stop request: launch.start installed it at the first instruction (SLURM);
        else installed now (local backend). The debug backend runs in the caller's interpreter and
        leaves its signals alone."""
        stop = early_stop_request()
        if stop is None:
            stop = StopRequest()
            if not backend_class(self.backend).in_process:
                install_stop_signals(stop)  # replaces submitit's handlers (local backend)
        return stop

    def _begin(
        self, run: RunDirectory, cluster: ClusterConfig, job_id: str, key: str, hosts: list[str], started: float
    ) -> tuple[Attempt, StepLog]:
        """Rank 0: close an earlier attempt that could not record its end, record this one, open its step log."""
        attempts = run.attempts()
        close_unrecorded(run, attempts, cluster, key)
        end = os.environ.get("SLURM_JOB_END_TIME")
        attempt = run.begin_attempt(
            job_id,
            key,
            hosts,
            run.last_checkpoint_step() or 0,
            previous=attempts,
            deadline=float(end) if end else started + cluster.time_minutes * 60,
            signal_log=os.environ.get("RSP_SIGNAL_LOG"),
            alloc=allocation(cluster, backend_class(self.backend).scheduler_environment),
        )
        return attempt, StepLog(run.step_log_path(attempt))

    @staticmethod
    def _on_start(run: RunDirectory, attempt: Attempt, steps: StepLog, start_step: int, total_steps: int) -> None:
        """Training resumed from `start_step`: the attempt's true start, and its step log's first record."""
        steps.append(start_step, time.time())
        if attempt.start_step != start_step:
            attempt.start_step = start_step
            run.save_attempt(attempt)
        run.record_progress(start_step, total_steps)

    def _after_attempt(self, run: RunDirectory, cluster: ClusterConfig) -> None:
        """Local backend: apply the requeue policy here (SLURM does it in the batch teardown)."""
        if not backend_class(self.backend).requeues_in_process:
            return
        marker = run.prune_marker()
        decision = decide(run.policy_attempts(), cluster, marker)
        log.info("%s", decision.reason)
        if decision.requeue:
            raise SystemExit(LOCAL_REQUEUE_EXIT)
        if decision.final_state == "failed":
            run.set_status("failed", decision.reason)
        elif decision.final_state == "pruned":
            run.set_status("pruned", decision.reason, pruned=marker)

    @staticmethod
    def _pause(run: RunDirectory, step: int) -> None:
        """The run waits at rung `step` holding nothing: its status says so (never resubmitted,
        never requeued), then its sweeps advance, so a promotion that came before this status
        resubmits it now (the evaluation job's advance could not, while this job still ran)."""
        run.set_status(PAUSED, f"paused at rung {step} of its asynchronous sweep: holds no allocation until promoted")
        report = advance(run.path.parent, role="paused job", runs=[run], recover_lost=False)
        for line in report.lines():
            log.info("%s", line)

    def _milestone_hook(self, run: RunDirectory, cfg):
        if not cfg.evaluation.tasks:
            return None

        def on_commit(manifest) -> None:
            if manifest.milestone:
                self._schedule_evaluations(run, manifest.step)

        return on_commit

    def _schedule_evaluations(self, run: RunDirectory, step: int | None) -> None:
        try:
            schedule_for_checkpoint(run, step, self.backend)
        except Exception:  # evaluations can be backfilled; training goes on
            log.exception("could not schedule evaluations of %s (step %s)", run.path.name, step)


def peer_vanished(exc: BaseException) -> bool:
    """This rank failed because another rank vanished: the attempt was `interrupted` (like the
    killed rank itself), not `crashed` (docs/requeue.md#end-reasons). A real crash of the peer
    (an exception) is recorded by that peer's traceback in its log; rank 0 sees only its absence."""
    return isinstance(exc, RuntimeError) and any(words in str(exc) for words in PEER_VANISHED)


def disk_full(run: RunDirectory, exc: BaseException, reserve: SpaceReserve) -> DiskFullError | None:
    """When the attempt failed for want of space: the space held in reserve is freed, so that its
    end and the run's status can still be written, and the failure is a DiskFullError (the one line
    the terminal shows, and what the requeue policy knows not to retry), whichever writer met the
    full disk first (a checkpoint, the step log, the metrics log)."""
    if not out_of_space(exc):
        return None
    full = (
        exc
        if isinstance(exc, DiskFullError)
        else DiskFullError(disk_full_message(run.path / "checkpoints", f"the run's records under {run.path}"))
    )
    if full is not exc:
        full.__cause__ = exc
    reserve.release()  # after measuring the free space the write met
    return full


def _tail(exc: BaseException, lines: int = 12) -> str:
    return "".join(traceback.format_exception(exc)[-lines:])
