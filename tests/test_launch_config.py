"""Launcher logic that needs no scheduler: composition, validation rules (one test each), run
identity, the requeue policy, sweep expansion, array splitting, the generated sbatch script."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import time
from pathlib import Path

import pytest

from core.schema import ConfigError, diff, to_dict
from launch.backends import InLocalSlot, Resources, SlurmBackend
from launch.config import absolutize, compose, options
from launch.dispatch import array_chunks
from launch.requeue import decide
from launch.rundir import Attempt, RunDirectory, run_id, slug
from launch.slurm_queries import parse_slurm_config
from launch.sweeps.expand import expand, load_sweep
from launch.validation.cluster import cluster_warnings, preemption_warnings
from launch.validation.run import problems
from testkit.launching import merged


def cfg_with(tmp_path: Path, videos: Path, *overrides: str):
    base = [f"data.root={videos}", "data.synthetic_videos=0", "evaluation.tasks=[]", f"output_root={tmp_path / 'runs'}"]
    return absolutize(compose(merged(*base, *overrides)), tmp_path)


# --- composition ---------------------------------------------------------------------------------


def test_composition_reports_every_bad_override_at_once_with_suggestions():
    with pytest.raises(ConfigError) as err:
        compose(["experiment=rsp_vits16_k40", "cluster=slurmm", "model.kl_scal=0.1", "cluster.nodes=four", "optim.lr=null"])
    msgs = err.value.problems
    assert len(msgs) == 4
    assert any(
        "experiment='rsp_vits16_k40' is not one of: cpu_study, natural_study, rsp_vitb16_k400, rsp_vitl16_k400, "
        "rsp_vits16_k400, smoke" in m
        for m in msgs
    )
    assert any("cluster='slurmm' is not one of: debug, local, slurm" in m for m in msgs)
    assert any("model.kl_scal is not a configuration key; did you mean model.kl_scale?" in m for m in msgs)
    assert any("cluster.nodes='four'" in m and "Integer" in m for m in msgs)


def test_any_field_overrides_and_paper_recipe_composes():
    cfg = compose(
        [
            "experiment=rsp_vits16_k400",
            "cluster=slurm",
            "cluster.nodes=4",
            "model.kl_scale=0.1",
            "evaluation.overrides.davis.topk=5",
        ]
    )
    assert (cfg.cluster.backend, cfg.cluster.nodes, cfg.model.kl_scale) == ("slurm", 4, 0.1)
    # the paper's recipe (docs/training.md#recipe): 1536 videos per step, 400 nominal epochs, blr 1.5e-4
    assert (cfg.model.name, cfg.optim.effective_batch, cfg.schedule.epochs, cfg.optim.blr) == (
        "rsp_vit_small_patch16",
        1536,
        400,
        1.5e-4,
    )
    assert cfg.evaluation.overrides["davis"]["topk"] == 5


def test_kinetics_experiments_are_one_recipe_plus_the_model_size(monkeypatch):
    """experiments/recipe/rsp_k400.yaml holds the recipe; S/16 and B/16 add only the model, L/16 also
    the per-GPU batch and nodes that keep its effective batch in memory."""
    for variable in ("RSP_K400_ROOT", "RSP_DAVIS_ROOT", "RSP_JHMDB_ROOT", "RSP_VIP_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    small, base, large = (to_dict(compose([f"experiment=rsp_vit{s}16_k400", "cluster=slurm"])) for s in "sbl")
    assert diff(small, base) == [
        "model.name: 'rsp_vit_small_patch16' != 'rsp_vit_base_patch16'",
        "name: 'rsp_vits16_k400' != 'rsp_vitb16_k400'",
    ]
    assert diff(small, large) == [
        "cluster.nodes: 2 != 4",
        "data.batch_size: 96 != 48",
        "model.name: 'rsp_vit_small_patch16' != 'rsp_vit_large_patch16'",
        "name: 'rsp_vits16_k400' != 'rsp_vitl16_k400'",
    ]
    # Regression pin of the run ids (every result-affecting setting, world size included) as shipped
    # before the recipe became one base: a change means submitting these experiments again would no
    # longer find their existing runs. Change it only on purpose. Changed once: data.decoder entered
    # the identity (decoders may convert colours differently) and data.seek left it (every seek mode
    # now returns the same frames); runs made before read some files' frames wrong under seek=fast.
    ids = [run_id(compose([f"experiment=rsp_vit{s}16_k400", "cluster=slurm"])) for s in "sbl"]
    assert ids == ["55e1f2a89286", "0dd2775e67e0", "332b7952a9a7"]
    assert "rsp_k400" not in " ".join(options("experiment"))  # the recipe is not an experiment of its own


def test_a_setting_added_to_the_identity_changes_ids_only_when_set():
    """data.decode_device came after runs existed: at its default (how those runs decoded) the ids
    stay as pinned above; decoding on the GPU is another trajectory, so another run."""
    base = compose(["experiment=rsp_vits16_k400", "cluster=slurm"])
    same = compose(["experiment=rsp_vits16_k400", "cluster=slurm", "data.decode_device=cpu"])
    gpu = compose(["experiment=rsp_vits16_k400", "cluster=slurm", "data.decoder=torchcodec", "data.decode_device=cuda"])
    cpu_torchcodec = compose(["experiment=rsp_vits16_k400", "cluster=slurm", "data.decoder=torchcodec"])
    assert run_id(base) == run_id(same) == "55e1f2a89286"
    assert len({run_id(base), run_id(gpu), run_id(cpu_torchcodec)}) == 3


# --- validation: one test per rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optim.effective_batch=64"], "but the recipe's optim.effective_batch is 64; set optim.accum_iter=8"),
        (["optim.effective_batch=100"], "choose data.batch_size and optim.accum_iter so that 1 x batch x accum = 100"),
        (["cluster.nodes=2"], "cluster.nodes (2) must be 1 with cluster=local"),
        (["cluster=debug", "cluster.tasks_per_node=2"], "cluster=debug runs one process in this interpreter"),
        (["cluster.gpus_per_node=2", "cluster.tasks_per_node=1"], "must equal cluster.gpus_per_node (2): one process per GPU"),
        (["cluster.tasks_per_node=0"], "cluster.tasks_per_node (0) must be >= 1 or null"),
        (["cluster.backend=pbs"], "cluster.backend ('pbs') must be one of local, slurm, debug"),
        (["cluster.gpus_per_node=1"], "exceeds the 0 GPU(s) of this machine"),
        (["cluster.signal_delay_s=5"], "cluster.signal_delay_s (5) must be >= 10"),
        (
            ["model.name=rsp_vit_large_patch16", "cluster.signal_delay_s=20"],
            "leaves too little time to finish a step and write a 3.9 GiB checkpoint",
        ),
        (["cluster.time_minutes=1", "cluster.signal_delay_s=55"], "cluster.signal_delay_s (55) must be at least 10 s shorter"),
        (["cluster.time_minutes=2", "cluster.signal_delay_s=120"], "than cluster.time_minutes (2 = 120 s)"),
        (
            ["evaluation.time_minutes=1", "evaluation.signal_delay_s=120"],
            "evaluation.signal_delay_s (120) leaves no time to evaluate within evaluation.time_minutes (1 = 60 s)",
        ),
        (["evaluation.signal_delay_s=5"], "evaluation.signal_delay_s (5) must be >= 10 s"),
        (["evaluation.max_requeues=-1"], "evaluation.max_requeues (-1) must be >= 0"),
        (["cluster.after=123"], "cluster.after (123) needs cluster=slurm"),
        (["data.root=/nonexistent/videos"], "data.root (/nonexistent/videos) does not exist"),
        (["data.labels=missing.csv"], "data.labels ('missing.csv') does not exist"),
        (["data.batch_size=64"], "data.batch_size (64) x 1 process(es) x optim.accum_iter (1) = 64 videos per optimizer step"),
        (["output_root=/sys/rsp-runs"], "output_root (/sys/rsp-runs) is not writable"),
        (["model.latent=none"], "model.kl_scale (0.01) must be 0 when model.latent=none"),
        (["model.img_size=60"], "model.img_size (60) must be a positive multiple of the patch size (8)"),
        (
            ["data.min_gap=4", "data.max_gap=2"],
            "data.max_gap (2) must be >= data.min_gap (4); raise data.max_gap or lower data.min_gap",
        ),
        (["data.decoder=opencv"], "data.decoder ('opencv') must be one of pyav, torchcodec, decord"),
        (["data.seek=fast"], "data.seek ('fast') must be one of auto, sequential; 'fast' is now 'auto'"),
        (["checkpoint.milestone_every_steps=30"], "must be a multiple of checkpoint.every_steps (20)"),
        (["data.synthetic_scene=cubes"], "data.synthetic_scene ('cubes') must be one of shapes, camouflage"),
        (
            ["evaluation.tasks=[davis,kitti]", "evaluation.synthetic=true"],
            "evaluation.tasks entry 'kitti' is not a registered evaluation task; registered: davis, vip, jhmdb, photo_davis",
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=false", "evaluation.data_roots.davis=/nonexistent/davis"],
            "evaluation.data_roots.davis (/nonexistent/davis) does not exist",
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.presets.davis=fast"],
            "evaluation.presets.davis ('fast') does not exist for task davis; valid: auto (= rsp)",
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.device=tpu"],
            "device ('tpu') must be one of auto, cpu, cuda",
        ),
    ],
)
def test_validation_rule(train_videos, tmp_path, overrides, expected):
    found = problems(cfg_with(tmp_path, train_videos, *overrides))
    assert any(expected in p for p in found), found


def test_a_decoder_that_cannot_run_here_is_refused_at_submit_time(train_videos, tmp_path, monkeypatch):
    import launch.validation.data
    import rsp.decoders
    from launch.validation.data import decoder_problem

    def missing(decoder):
        raise rsp.decoders.DecoderUnavailable(f"{decoder} cannot load FFmpeg's shared libraries: apt-get install ffmpeg")

    monkeypatch.setattr(launch.validation.data, "require", missing)  # this project's check, as if FFmpeg were missing
    decoder_problem.cache_clear()
    try:
        found = problems(cfg_with(tmp_path, train_videos, "data.decoder=torchcodec"))
    finally:
        decoder_problem.cache_clear()
    assert any("data.decoder (torchcodec) cannot decode on this machine" in p and "apt-get install ffmpeg" in p for p in found)


def test_validation_refuses_generated_videos_of_another_scene(tmp_path):
    from rsp.synthetic import generate_dataset

    generate_dataset(tmp_path / "videos", 2, num_frames=4, scene="shapes")
    found = problems(cfg_with(tmp_path, tmp_path / "videos", "data.synthetic_videos=2", "data.batch_size=2"))
    assert any("holds generated shapes videos, not the camouflage videos data.synthetic_scene asks for" in p for p in found), (
        found
    )
    scene = ("data.synthetic_videos=2", "data.batch_size=2", "data.synthetic_scene=shapes", "data.max_gap=3")  # 4-frame videos
    assert problems(cfg_with(tmp_path, tmp_path / "videos", *scene)) == []


def test_validation_collects_all_problems_and_a_good_config_has_none(train_videos, tmp_path):
    assert problems(cfg_with(tmp_path, train_videos)) == []
    found = problems(cfg_with(tmp_path, train_videos, "model.latent=none", "data.max_gap=0", "cluster.nodes=2"))
    assert len(found) == 3
    assert not (tmp_path / "runs").exists()  # validating creates nothing


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["cluster.max_timeouts=0"], "cluster.max_timeouts=0: the run is marked failed at its first time limit"),
        (["cluster.max_preemptions=0"], "cluster.max_preemptions=0: the run is marked failed at its first preemption"),
        (["cluster.max_failures=0"], "set cluster.max_failures >= 1 to requeue"),
        (
            ["cluster=slurm", "cluster.time_minutes=1", "cluster.signal_delay_s=30"],
            "leaves 30 s of cluster.time_minutes (1) before the stop signal, which SLURM may send up to 30 s early",
        ),
    ],
)
def test_warning_rule(train_videos, tmp_path, overrides, expected):
    cfg = cfg_with(tmp_path, train_videos, *overrides)
    assert not problems(cfg)  # allowed: a warning, not an error
    assert any(expected in w for w in cluster_warnings(cfg.cluster)), cluster_warnings(cfg.cluster)


def test_a_good_config_has_no_warnings(train_videos, tmp_path):
    assert cluster_warnings(cfg_with(tmp_path, train_videos).cluster) == []
    assert cluster_warnings(cfg_with(tmp_path, train_videos, "cluster=slurm").cluster) == []


def test_a_slurm_that_preempts_without_the_stop_signal_is_warned_about():
    config = parse_slurm_config(
        "PreemptMode             = REQUEUE\nPreemptType             = preempt/partition_prio\n"
        "SlurmctldParameters     = enable_configless\n"
    )
    (warning,) = preemption_warnings(config)
    assert "without sending them the stop signal" in warning and "preempt_send_user_signal" in warning
    assert preemption_warnings({**config, "SlurmctldParameters": "preempt_send_user_signal"}) == []
    assert preemption_warnings({**config, "PreemptType": "preempt/none"}) == []
    assert preemption_warnings({**config, "PreemptMode": "OFF"}) == []


# --- run identity --------------------------------------------------------------------------------


def test_run_id_ignores_runtime_only_settings_and_tracks_everything_else(train_videos, tmp_path):
    base = run_id(cfg_with(tmp_path, train_videos))
    same = [
        "data.num_workers=3",
        "runtime.log_every_steps=7",
        "cluster.time_minutes=99",
        "cluster.partition=gpu",
        "name=other",
        "checkpoint.every_steps=10",
        "evaluation.tasks=[davis]",
        "data.seek=sequential",  # the same frames as random access, where that was verified
    ]
    for override in same:
        assert run_id(cfg_with(tmp_path, train_videos, override)) == base, override
    changed = ["model.kl_scale=0.1", "data.max_gap=10", "optim.lr=0.002", "runtime.seed=1", "cluster.tasks_per_node=2"]
    for override in [*changed, "data.decoder=decord"]:  # decoders may convert colours differently
        assert run_id(cfg_with(tmp_path, train_videos, override)) != base, override


def test_slugs_are_safe_directory_and_job_names():
    assert slug('it\'s a "quoted"\nrun; rm -rf /') == "it-s-a-quoted-run-rm--rf"
    assert slug("\n\n") == "run" and len(slug("x" * 500)) == 60


def test_run_directory_is_found_again_whatever_the_name(train_videos, tmp_path):
    cfg = cfg_with(tmp_path, train_videos)
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    renamed = cfg_with(tmp_path, train_videos, "name=renamed")
    assert RunDirectory.for_config(renamed).path == run.path


# --- requeue policy ------------------------------------------------------------------------------


def attempts(*ends: tuple[str, int]) -> list[Attempt]:
    out, step = [], 0
    for i, (reason, end) in enumerate(ends):
        out.append(Attempt(i, "7", f"7/{i}", ["n1"], 0.0, step, 1.0, end, reason))
        step = end
    return out


def test_requeue_policy_by_reason_with_separate_budgets(train_videos, tmp_path):
    cluster = dataclasses.replace(cfg_with(tmp_path, train_videos).cluster, max_timeouts=2, max_preemptions=1, max_failures=1)
    assert decide(attempts(("finished", 10)), cluster).final_state == "finished"
    assert decide(attempts(("timeout", 5)), cluster).requeue
    assert decide(attempts(("timeout", 5), ("timeout", 9)), cluster).requeue
    assert decide(attempts(("timeout", 5), ("timeout", 9), ("timeout", 12)), cluster).final_state == "failed"
    assert decide(attempts(("timeout", 5), ("timeout", 9), ("preempted", 12)), cluster).requeue  # own budget
    assert "preemption budget exhausted" in decide(attempts(("preempted", 5), ("preempted", 9)), cluster).reason
    assert decide(attempts(("crashed", 5)), cluster).requeue
    assert decide(attempts(("crashed", 5), ("interrupted", 8)), cluster).final_state == "failed"


def test_breaker_stops_two_failures_at_the_same_step(train_videos, tmp_path):
    cluster = dataclasses.replace(cfg_with(tmp_path, train_videos).cluster, max_failures=10)
    decision = decide(attempts(("timeout", 5), ("crashed", 7), ("crashed", 7)), cluster)
    assert not decision.requeue and "breaker" in decision.reason and "step 7" in decision.reason
    assert decide(attempts(("crashed", 7), ("crashed", 9)), cluster).requeue  # progress was made
    assert not decide(attempts(("interrupted", 7), ("interrupted", 7)), cluster).requeue  # e.g. the OOM killer, twice
    assert decide(attempts(("crashed", 7), ("interrupted", 7)), cluster).requeue  # different failures: a coincidence
    nan, worker = attempts(("crashed", 7), ("crashed", 7)), "RuntimeError: DataLoader worker (pid 12) is killed by signal"
    nan[0].error, nan[1].error = "Traceback ...\nrsp.train.NonFiniteLossError: non-finite loss at step 8", worker
    assert decide(nan, cluster).requeue  # two different errors at the same step
    nan[1].error = "Traceback ...\nrsp.train.NonFiniteLossError: non-finite loss at step 8 on 1 rank(s)"
    assert not decide(nan, cluster).requeue
    data = attempts(("crashed", 7), ("crashed", 7))  # videos deleted under a training run: the files, on the terminal
    data[0].error = data[1].error = "Traceback ...\nrsp.video.DataError: 16 videos in a row could not be read (a.mp4: gone)"
    assert decide(data, cluster).reason.endswith("The error: 16 videos in a row could not be read (a.mp4: gone)")


@pytest.mark.parametrize(
    "error, cause, next_step",
    [
        (  # resuming repeats the same steps exactly: a retry would fail the same way; the hint is the learning rate
            "rsp.train.NonFiniteLossError",
            "non-finite loss at step 2 on 1 rank(s), step 1 the last completed: loss=nan. The learning rate was 1e+09",
            "would fail the same way",
        ),
        (  # a retry would meet the same full disk: the run is failed, --retry-failed resumes it once space is made
            "rsp.checkpoint.DiskFullError",
            "no space left on device writing checkpoint step 4 in /x/checkpoints (6.1 MiB free); kept: 2 committed",
            "--retry-failed",
        ),
        (  # a checkpoint of another model in the run directory: retried once, then a breaker naming only the type
            "rsp.train.ResumeError",
            "/r/checkpoints/step_00000004.pt was written by a different configuration (model.img_size: 32 != 64); "
            "refusing to continue it with this one. Use the original configuration, or a new run directory",
            "a retry would read the same checkpoints",
        ),
    ],
)
def test_a_crash_a_retry_would_repeat_is_not_retried_and_says_what_to_do(train_videos, tmp_path, error, cause, next_step):
    """Failed at once, with the error's own one line as the reason and what to do next, not a traceback."""
    cluster = dataclasses.replace(cfg_with(tmp_path, train_videos).cluster, max_failures=3)
    crashed = attempts(("crashed", 6))
    crashed[0].error = f"Traceback (most recent call last):\n  ...\n{error}: {cause}"
    decision = decide(crashed, cluster)
    assert not decision.requeue and decision.final_state == "failed"
    assert decision.reason.startswith(cause) and next_step in decision.reason and "Traceback" not in decision.reason


def test_stop_signals_are_never_failures(train_videos, tmp_path):
    cluster = dataclasses.replace(cfg_with(tmp_path, train_videos).cluster, max_failures=0)
    for reason in ("timeout", "preempted", "stopped", "requeued"):
        assert decide(attempts((reason, 0), (reason, 0)), cluster).requeue, reason  # no breaker, no failure budget
    cancelled = decide(attempts(("cancelled", 3)), cluster)
    assert not cancelled.requeue and cancelled.final_state is None  # scancel: not requeued, not failed


def test_an_attempt_without_a_known_end_is_neither_requeued_nor_failed(train_videos, tmp_path):
    """Two jobs of one run (a duplicate submit) leave the other's attempt open: deciding on it once
    raised KeyError: None. Now it says why and takes the safe path: no requeue, no final state."""
    cluster = cfg_with(tmp_path, train_videos).cluster
    for reason in (None, "exploded"):
        decision = decide(attempts(("timeout", 5), (reason, 7)), cluster)
        assert not decision.requeue and decision.final_state is None
        assert f"no known end reason ({reason!r})" in decision.reason and "another job may be running" in decision.reason


# --- sweeps --------------------------------------------------------------------------------------


def write_sweep(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_sweeps_expand(train_videos):
    sizes = {"kl_weight": 6, "frame_gap": 5, "model_size": 3, "latent": 3, "mae_aux": 3}
    for name, n in sizes.items():
        runs = expand(load_sweep(name), [f"data.root={train_videos}"])
        assert len(runs) == n and len({run_id(r.cfg) for r in runs}) == n, name
    latent = {r.cfg.model.latent: r.cfg.model.kl_scale for r in expand(load_sweep("latent"), [])}
    assert latent == {"discrete": 0.01, "gaussian": 0.01, "none": 0.0}  # per-value override
    sizes = {r.cfg.model.name: (r.cfg.cluster.nodes, r.cfg.data.batch_size) for r in expand(load_sweep("model_size"), [])}
    assert sizes["rsp_vit_large_patch16"] == (4, 48)
    assert all(n * 8 * b == 1536 for n, b in sizes.values())  # the recipe's effective batch holds


def test_grid_and_zip_axes_and_name_template(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            """
experiment: smoke
name: "kl{model.kl_scale}-{model.latent}-gap{data.max_gap}"
axes:
  - key: model.kl_scale
    values: [0.001, 0.01]
  - zip:
      model.latent: [discrete, gaussian, discrete]
      data.max_gap: [8, 8, 12]
""",
        )
    )
    runs = expand(sweep, ["evaluation.tasks=[]"])
    assert len(runs) == 6
    assert {r.name for r in runs} == {
        f"kl{k}-{lat}-gap{g}" for k in (0.001, 0.01) for lat, g in (("discrete", 8), ("gaussian", 8), ("discrete", 12))
    }
    assert sweep.axis_keys == ["model.kl_scale", "model.latent", "data.max_gap"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "axes:\n  - key: model.kl_scal\n    values: [1]\n",
            "model.kl_scal is not a configuration key; did you mean model.kl_scale",
        ),
        ("axes:\n  - key: model.kl_scale\n    values: []\n", "has no values (an empty axis yields no runs)"),
        (
            "axes:\n  - key: model.kl_scale\n    values: [0.1, high]\n",
            "model.kl_scale='high' has the wrong type (expected float)",
        ),
        (
            "axes:\n  - key: data.max_gap\n    values: [1]\n  - key: data.max_gap\n    values: [2]\n",
            "data.max_gap is also swept by axes[0]; an axis key may appear once",
        ),
        ("axes:\n  - key: runtime.log_every_steps\n    values: [1, 2]\n", "are the same experiment"),
        ("axes:\n  - zip:\n      data.max_gap: [1, 2]\n      data.min_gap: [1]\n", "zips lists of different lengths"),
        ("axis:\n  - key: data.max_gap\n", "unknown top-level key 'axis'"),
    ],
)
def test_bad_sweeps_report_every_problem_and_submit_nothing(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        expand(load_sweep(write_sweep(tmp_path, "experiment: smoke\n" + text)), ["evaluation.tasks=[]"])
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_an_axis_over_two_spellings_of_one_data_folder_is_one_experiment(tmp_path):
    """data.root through a symlink got its own run id: the same training, twice."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "videos")
    text = f"experiment: smoke\naxes:\n  - key: data.root\n    values: [{tmp_path / 'videos'}, {tmp_path / 'link'}]\n"
    with pytest.raises(ConfigError) as err:
        expand(load_sweep(write_sweep(tmp_path, text)), ["evaluation.tasks=[]"])
    (problem,) = err.value.problems
    assert "are the same experiment" in problem and "a data.root through a symlink is the folder it names" in problem


def _busy_interval(out: str, name: str) -> None:
    start = time.time()
    time.sleep(1.0)  # long beside the 0.05 s poll: the second slot is taken while the first is busy
    Path(out, name).write_text(f"{start} {time.time()}")


def test_local_slots_run_at_most_that_many_jobs_at_once(tmp_path):
    """Six processes, two slots: never more than two inside at once, and every one gets its turn."""
    jobs = [
        InLocalSlot(functools.partial(_busy_interval, str(tmp_path), f"job{i}"), str(tmp_path / "slots"), 2, 0.05)
        for i in range(6)
    ]
    processes = [multiprocessing.get_context("fork").Process(target=job) for job in jobs]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    intervals = [tuple(map(float, (tmp_path / f"job{i}").read_text().split())) for i in range(6)]
    starts = sorted(s for s, _ in intervals)
    overlap = max(sum(s <= t < e for s, e in intervals) for t in starts)
    assert overlap == 2 and all(p.exitcode == 0 for p in processes)


def test_arrays_group_by_resources_and_split_at_max_array_size():
    small, big = Resources(nodes=1, job_name="a"), Resources(nodes=4, time_minutes=2880, job_name="b")
    resources = [small] * 5 + [big] * 3 + [Resources(nodes=1, job_name="c")]
    chunks = array_chunks(resources, limit=2)
    assert sorted(len(c) for c in chunks) == [1, 2, 2, 2, 2]  # 6 small in 3 chunks, 3 big in 2
    assert len(chunks) == sum(-(-n // 2) for n in (6, 3))
    assert all(len({resources[i].group_key() for i in c}) == 1 for c in chunks)


# --- the sbatch script -----------------------------------------------------------------------------


def test_sbatch_script_is_requeueable_kills_on_bad_exit_and_ends_with_the_policy(tmp_path):
    from launch.snapshot import Snapshot

    folder = tmp_path / "it's a folder"
    backend = SlurmBackend(folder, Snapshot(tmp_path / "code dir", "abc123"))
    script = backend.sbatch_script(
        Resources(
            nodes=2,
            tasks_per_node=4,
            gpus_per_node=4,
            time_minutes=90,
            signal_delay_s=120,
            partition="gpu",
            extra_sbatch=(("reservation", "x y"),),
            job_name="run-1",
        )
    )
    for line in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR2@120",  # the batch shell exists from the first instant; it defers and forwards
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=90",
        "#SBATCH --reservation='x y'",
        "--kill-on-bad-exit=1",
        f"export PYTHONPATH='{tmp_path}/code dir'",
        "trap 'rsp_signal USR2' USR2",
        "trap 'rsp_signal TERM' TERM",
        "$RSP_SIGNAL_GUARD",
        "-u -m launch.start",
        "& rsp_wait_for_ranks $!",
        "-m launch.requeue --folder",
        '--exit-code "$rsp_rc"',
    ):
        assert line in script, line
    assert script.index("trap ") < script.index("export PYTHONPATH")  # signals are logged from the first line
    assert script.index("srun") < script.index("-m launch.requeue")  # the policy runs after the ranks end
    assert "'" + str(folder).replace("'", "'\"'\"'") in script  # quoted for bash, never bare


# --- following a local run -------------------------------------------------------------------------


def test_following_reads_each_metrics_line_once_and_starts_over_when_the_log_is_rewritten(tmp_path):
    from core.atomicio import atomic_write_text
    from launch.follow import MetricsTail

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.new_records() == []  # no log yet
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in tail.new_records()] == [1, 2]  # the line being written waits
    with open(path, "a") as f:
        f.write('ss": 0.5}\n')
    assert tail.new_records() == [{"step": 3, "loss": 0.5}] and tail.new_records() == []
    atomic_write_text(path, '{"step": 1}\n{"step": 2}\n')  # a resume truncates the log to its checkpoint
    assert [r["step"] for r in tail.new_records()] == [1, 2]
