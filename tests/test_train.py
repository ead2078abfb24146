"""The training engine: exact resume, crash-safe checkpoints, loud failures, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from core.schema import to_dict
from rsp import rng
from rsp.checkpoint import CheckpointStore, weights_digest
from rsp.distributed import DistEnv, RendezvousError, init_process_group
from rsp.lifecycle import StopRequest
from rsp.model import create_model
from rsp.train import NonFiniteLossError, ResumeError, TrainHooks, train
from testkit.training import (
    REPO,
    ReferenceRuns,
    StopOnRead,
    assert_same_tensors,
    assert_same_training_state,
    final_state,
    loss_trace,
    tiny_config,
    torchrun,
)


def test_resume_at_several_steps_is_bitwise_identical(train_videos, tmp_path, reference_runs):
    full = reference_runs.get(tiny_config(train_videos))  # uninterrupted, trained once per pytest run
    chopped = tmp_path / "interrupted"
    first = train(tiny_config(train_videos, runtime={"stop_after_steps": 3}), DistEnv(), chopped)
    assert (first.status, first.step) == ("stopped", 3)
    second = train(tiny_config(train_videos, runtime={"stop_after_steps": 2}), DistEnv(), chopped)
    assert (second.status, second.resumed_from, second.step) == ("stopped", 3, 5)
    third = train(tiny_config(train_videos), DistEnv(), chopped)
    assert (third.status, third.resumed_from, third.step) == ("finished", 5, 8)
    assert_same_training_state(full, chopped)
    assert [r["step"] for r in loss_trace(chopped)] == list(range(1, 9))


def test_a_reference_asked_with_loader_workers_is_shared_and_frees_its_lock(train_videos, tmp_path):
    """ReferenceRuns' key leaves the loader's workers out: a run with workers and one without share
    one reference, trained once, and the second asker in this process gets it at once (persistent
    workers forked while the key's lock was held kept it held for good: the suite hung)."""
    refs, short = ReferenceRuns(tmp_path / "refs"), {"total_steps": 2, "warmup_steps": 1}
    first = refs.get(tiny_config(train_videos, data={"num_workers": 2}, schedule=short))
    asker = threading.Thread(
        target=lambda: setattr(asker, "path", refs.get(tiny_config(train_videos, schedule=short))), daemon=True
    )
    asker.start()
    asker.join(60)
    assert not asker.is_alive(), "the second asker still waits for the reference's lock"
    assert asker.path == first and len(list((tmp_path / "refs").glob("*.done"))) == 1


@pytest.mark.slow  # three runs with loader workers: ~12 s
def test_resume_with_loader_workers_and_accumulation(train_videos, tmp_path):
    sections = {"data": {"num_workers": 2, "batch_size": 2}, "optim": {"lr": 1e-3, "accum_iter": 2}}
    full, chopped = tmp_path / "full", tmp_path / "chopped"
    train(tiny_config(train_videos, schedule={"total_steps": 5, "warmup_steps": 1}, **sections), DistEnv(), full)
    cfg = tiny_config(train_videos, schedule={"total_steps": 5, "warmup_steps": 1}, runtime={"stop_after_steps": 2}, **sections)
    train(cfg, DistEnv(), chopped)
    train(tiny_config(train_videos, schedule={"total_steps": 5, "warmup_steps": 1}, **sections), DistEnv(), chopped)
    assert_same_training_state(full, chopped)


@pytest.mark.slow  # three torchrun launches of 2 ranks: ~60 s on 2 cores
def test_two_process_resume_is_bitwise_identical(train_videos, tmp_path):
    full, chopped = tmp_path / "full", tmp_path / "chopped"
    schedule = {"total_steps": 4, "warmup_steps": 1}
    done = torchrun(tiny_config(train_videos, schedule=schedule), full, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    part = torchrun(tiny_config(train_videos, schedule=schedule, runtime={"stop_after_steps": 2}), chopped, tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    assert '"status": "stopped", "step": 2' in part.stdout
    rest = torchrun(tiny_config(train_videos, schedule=schedule), chopped, tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert_same_training_state(full, chopped)
    state = final_state(chopped)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # ranks draw different noise


def test_corrupt_and_partial_checkpoints_fall_back_to_the_newest_valid(train_videos, tmp_path, reference_runs):
    run = tmp_path / "run"
    cfg = tiny_config(train_videos, runtime={"stop_after_steps": 6})
    train(cfg, DistEnv(), run)
    ckpts = run / "checkpoints"
    newest = ckpts / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn write
    (ckpts / "step_00000099.pt").write_bytes(b"no manifest: a write killed before its commit")
    (ckpts / "step_00000007.pt.tmp-abc").write_bytes(b"leftover temporary")
    result = train(tiny_config(train_videos), DistEnv(), run)
    assert result.resumed_from == 4 and result.status == "finished"
    assert not (ckpts / "step_00000099.pt").exists() and not (ckpts / "step_00000007.pt.tmp-abc").exists()
    full = reference_runs.get(tiny_config(train_videos))
    assert_same_tensors(final_state(full)["model"], final_state(run)["model"], "model")


def test_all_checkpoints_corrupt_refuses_instead_of_starting_over(train_videos, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train_videos, runtime={"stop_after_steps": 2}), DistEnv(), run)
    for pt in (run / "checkpoints").glob("*.pt"):
        pt.write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="none is valid.*step_00000002.pt"):
        train(tiny_config(train_videos), DistEnv(), run)
    assert (run / "checkpoints" / "step_00000002.pt").read_bytes() == b"garbage"  # nothing overwritten


def test_checkpoint_from_another_config_is_refused_with_the_difference(train_videos, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train_videos, runtime={"stop_after_steps": 2}), DistEnv(), run)
    other = tiny_config(train_videos, model={"kl_scale": 0.5})
    with pytest.raises(ResumeError, match=r"step_00000002\.pt.*model\.kl_scale: 0\.01 != 0\.5"):
        train(other, DistEnv(), run)


def test_optimizer_state_for_another_layout_is_detected(train_videos, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train_videos, runtime={"stop_after_steps": 2}), DistEnv(), run)
    store = CheckpointStore(run / "checkpoints")
    manifest = store.manifests()[-1]
    state = store.load(manifest)
    state["optimizer"]["state"][5]["exp_avg"] = torch.zeros(3, 3)
    for m in store.manifests():  # rewrite as a properly committed checkpoint with the bad state
        (store.dir / m.file).unlink()
        (store.dir / m.file).with_suffix(".json").unlink()
    store.commit(manifest.step, state, milestone=False)
    with pytest.raises(ResumeError, match="optimizer state is for another parameter layout.*tensor 5"):
        train(tiny_config(train_videos), DistEnv(), run)


@pytest.mark.slow  # a checkpoint every step, a subprocess and two runs: ~25 s
def test_kill_minus_9_during_checkpointing_never_loses_the_run(train_videos, tmp_path):
    """SIGKILL a training process at an arbitrary moment while it checkpoints every step; the
    next start resumes from a valid checkpoint and the run ends bitwise like an uninterrupted one."""
    cfg = tiny_config(
        train_videos, schedule={"total_steps": 30, "warmup_steps": 2}, checkpoint={"every_steps": 1, "keep_last": 2}
    )
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(cfg, DistEnv(), full)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "dist_train_worker.py"), str(cfg_file), str(killed)], env=env, cwd=REPO
    )
    deadline = time.monotonic() + 120
    while len(list((killed / "checkpoints").glob("step_*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = train(cfg, DistEnv(), killed)
    assert result.status == "finished" and result.resumed_from is not None
    assert_same_tensors(final_state(full)["model"], final_state(killed)["model"], "model")
    assert_same_tensors(final_state(full)["optimizer"], final_state(killed)["optimizer"], "optimizer")


class CrashAtStep(StopRequest):
    """Raises while the trainer reads the stop flag at a given step: a crash after logging."""

    def __init__(self, step: int):
        super().__init__()
        self.reads, self.step = 0, step

    @property
    def requested(self) -> bool:
        self.reads += 1
        if self.reads == self.step:
            raise RuntimeError("simulated crash")
        return False


def test_a_crash_returns_only_once_the_checkpoint_on_its_way_is_committed(train_videos, tmp_path):
    """A crash while the writer thread still works on a checkpoint: train() raises only after that
    checkpoint is committed and its hook ran, so no writer outlives its attempt and a retry in the
    same process resumes from it (under load a slow write used to lose it to the retry)."""
    hooked = []

    def slow_hook(manifest) -> None:
        if manifest.step == 4:
            time.sleep(2)  # the writer is still busy when step 7 crashes
        hooked.append(manifest.step)

    cfg = tiny_config(train_videos, checkpoint={"every_steps": 4, "keep_last": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, DistEnv(), tmp_path / "run", CrashAtStep(7), TrainHooks(on_commit=slow_hook))
    assert hooked == [0, 4]


def test_tensorboard_run_continues_without_duplicate_steps(train_videos, tmp_path, reference_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = tiny_config(train_videos, checkpoint={"every_steps": 4, "keep_last": 2})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, DistEnv(), run, stop=CrashAtStep(7))  # steps 1-6 logged, checkpoint at 4
    train(cfg, DistEnv(), run)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "train_loss",
        "loss_post",
        "loss_prior",
        "loss_kl",
        "kl",
        "loss_mae",
        "lr",
        "grad_norm",
        "pairs_per_s",
        "data_wait_share",
        "broken_videos",
    }
    assert expected <= tags
    steps = [e.step for e in acc.Scalars("train_loss")]
    assert steps == list(range(1, 9)), steps
    assert [r["step"] for r in loss_trace(run)] == list(range(1, 9))
    reference = reference_runs.get(cfg)  # the uninterrupted run (checkpoint cadence is runtime-only)
    ref = EventAccumulator(str(reference / "tb"))
    ref.Reload()
    assert [e.value for e in acc.Scalars("train_loss")] == [e.value for e in ref.Scalars("train_loss")]


@pytest.mark.slow  # a torchrun launch of 2 ranks: ~10 s
def test_non_finite_loss_raises_on_every_rank(train_videos, tmp_path):
    cfg = tiny_config(train_videos, optim={"lr": 1e30}, schedule={"total_steps": 6, "warmup_steps": 0})
    proc = torchrun(cfg, tmp_path / "run", tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("NonFiniteLossError: non-finite loss at step") == 2, proc.stderr[-4000:]
    assert "loss_post=" in proc.stderr and "the last checkpoint is intact" in proc.stderr


def test_non_finite_loss_single_process_names_the_step_and_parts(train_videos, tmp_path):
    cfg = tiny_config(train_videos, optim={"lr": 1e30}, schedule={"total_steps": 6, "warmup_steps": 0})
    with pytest.raises(NonFiniteLossError, match=r"step \d.*kl_loss=.*loss_post=.*mae_loss=") as info:
        train(cfg, DistEnv(), tmp_path / "run")
    assert (
        "The learning rate was" in str(info.value)
        and "lower optim.lr" in str(info.value)
        and "optim.clip_grad" in str(info.value)
    )


def test_failed_rendezvous_raises_instead_of_training_alone():
    env = DistEnv(rank=1, world_size=2, master_addr="127.0.0.1", master_port=1)  # nobody listens there
    start = time.monotonic()
    with pytest.raises(RendezvousError, match="rank 1/2 could not rendezvous"):
        init_process_group(env, torch.device("cpu"), timeout_minutes=0.05)
    assert time.monotonic() - start < 60  # a 3 s timeout, with a margin for a busy machine


def test_incomplete_distributed_environment_is_an_error():
    with pytest.raises(RendezvousError, match="MASTER_ADDR, MASTER_PORT missing"):
        DistEnv.from_environ({"RANK": "0", "WORLD_SIZE": "2"})
    assert DistEnv.from_environ({}) == DistEnv()


def test_watchdog_turns_a_hang_into_a_failure(tmp_path):
    script = "from rsp.lifecycle import ProgressWatchdog\nimport time\nwith ProgressWatchdog(1.0):\n    time.sleep(30)\n"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1 and time.monotonic() - start < 20  # a 1 s watchdog vs a 30 s sleep, with a margin
    assert "Timeout" in proc.stderr and "time.sleep" in proc.stderr or "line 4" in proc.stderr


def test_cooperative_stop_saves_at_the_current_step(train_videos, tmp_path):
    result = train(tiny_config(train_videos), DistEnv(), tmp_path / "run", stop=StopOnRead(5))
    assert (result.status, result.step, result.stop_reason) == ("stopped", 5, "SIGUSR2")
    assert CheckpointStore(tmp_path / "run" / "checkpoints").manifests()[-1].step == 5  # no step lost


# --- the initialization as a milestone ------------------------------------------------------------


def initial_weights(cfg) -> dict:
    """The weights a fresh run of `cfg` starts from, built outside the trainer."""
    rng.seed_process(cfg.runtime.seed, rng.MODEL_INIT_STREAM)
    return create_model(cfg.model).state_dict()


def step0(run) -> tuple[object, bytes]:
    store = CheckpointStore(run / "checkpoints")
    manifest = next(m for m in store.manifests() if m.step == 0)
    return manifest, (store.dir / manifest.file).read_bytes()


def test_initialization_is_a_retained_milestone_with_a_manifest(train_videos, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(train_videos, checkpoint={"every_steps": 1, "keep_last": 1})
    train(cfg, DistEnv(), run)
    store = CheckpointStore(run / "checkpoints")
    # keep_last=1: 1..6 pruned, 7 the newest ordinary checkpoint; the initialization stays
    assert [(m.step, m.milestone) for m in store.manifests()] == [(0, True), (7, False), (8, True)]
    manifest, _ = step0(run)
    assert store.verify(manifest) is None and manifest.config_hash == store.manifests()[-1].config_hash
    state = store.load(manifest)
    assert state["step"] == 0 and state["optimizer"]["state"] == {}  # before the first optimizer step
    assert_same_tensors(state["model"], initial_weights(cfg), "model")
    assert store.prune(keep_last=0) == [7] and (store.dir / manifest.file).exists()  # retention never takes it
    # the weights' own digest: what a sweep's runs from one seed share at step 0 (their evaluation is made once)
    assert manifest.weights_sha256 == weights_digest(initial_weights(cfg)) != store.manifests()[-1].weights_sha256


def one_ulp_up(tensor: torch.Tensor, bits: torch.dtype) -> torch.Tensor:
    """`tensor` with its last element one unit in the last place larger (`bits`: an integer type of its width)."""
    step = torch.zeros(tensor.numel(), dtype=bits)
    step[-1] = 1
    return (tensor.reshape(-1).view(bits) + step).view(tensor.dtype).reshape(tensor.shape)


def test_the_weights_digest_sees_every_name_dtype_shape_and_bit():
    state = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(2, dtype=torch.bfloat16)}
    digest = weights_digest(state)
    assert digest == weights_digest(dict(reversed(state.items())))  # not the order of the dict
    assert digest == weights_digest({k: v.clone() for k, v in state.items()})
    changed = [
        {**state, "b": state["b"].reshape(3, 2)},
        {**state, "b": state["b"].double()},
        {"c": state["b"], "a": state["a"]},
        {**state, "a": one_ulp_up(state["a"], torch.int16)},
        {**state, "b": one_ulp_up(state["b"], torch.int32)},
    ]
    assert len({digest, *map(weights_digest, changed)}) == 1 + len(changed)


def test_a_resumed_run_keeps_its_original_initialization(train_videos, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train_videos, runtime={"stop_after_steps": 3}), DistEnv(), run)
    manifest, content = step0(run)
    result = train(tiny_config(train_videos), DistEnv(), run)
    assert (result.resumed_from, result.status) == (3, "finished")
    assert step0(run) == (manifest, content)  # same manifest (creation time included), same bytes
    state = CheckpointStore(run / "checkpoints").load(manifest)
    assert_same_tensors(state["model"], initial_weights(tiny_config(train_videos)), "model")
    assert not torch.equal(state["model"]["blocks.0.attn.qkv.weight"], final_state(run)["model"]["blocks.0.attn.qkv.weight"])


def test_resuming_from_the_step0_checkpoint_is_bitwise_exact(train_videos, tmp_path, reference_runs):
    """A run killed before its first ordinary checkpoint resumes from step 0 exactly, and does not
    write step 0 again."""
    full, killed = reference_runs.get(tiny_config(train_videos)), tmp_path / "killed"
    train(tiny_config(train_videos, runtime={"stop_after_steps": 2}), DistEnv(), killed)
    store = CheckpointStore(killed / "checkpoints")
    for m in store.manifests():
        if m.step:  # as if killed after committing step 0 and before step 2
            (store.dir / m.file).unlink()
            (store.dir / m.file).with_suffix(".json").unlink()
    (killed / "metrics.jsonl").unlink()
    (killed / "tb").rename(tmp_path / "tb-of-the-killed-attempt")
    before = step0(killed)
    result = train(tiny_config(train_videos), DistEnv(), killed)
    assert (result.resumed_from, result.status) == (0, "finished")
    assert step0(killed) == before
    assert_same_training_state(full, killed)


def test_initial_milestone_off_writes_no_step0_even_when_a_resume_turns_it_on(train_videos, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train_videos, checkpoint={"initial_milestone": False}, runtime={"stop_after_steps": 3}), DistEnv(), run)
    assert 0 not in [m.step for m in CheckpointStore(run / "checkpoints").manifests()]
    train(tiny_config(train_videos), DistEnv(), run)  # a runtime-only field: the same run, resumed
    steps = [m.step for m in CheckpointStore(run / "checkpoints").manifests()]
    assert 0 not in steps and steps[-1] == 8  # the weights at step 2 are not the initialization
