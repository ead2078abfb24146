"""Submit-time rules added for bad input (one test per rule): each message names the key, the bad
value and the fix. Command-line mistakes, settings that would be silently ignored, the data
(labels file against the disk, batch against the dataset, max_gap against the frame counts), and a
refused submit that creates nothing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from core.schema import ConfigError
from launch.config import absolutize, compose
from launch.rundir import RunDirectory
from launch.validation import validate
from launch.validation.data import unlisted
from launch.validation.run import problems
from rsp.synthetic import SCENE_SIZES, generate_dataset
from rsp.video import LabelEntry, read_labels, write_labels
from testkit.launching import merged, submit


def cfg_with(tmp_path: Path, videos: Path, *overrides: str):
    base = [f"data.root={videos}", "data.synthetic_videos=0", "evaluation.tasks=[]", f"output_root={tmp_path / 'runs'}"]
    return absolutize(compose(merged(*base, *overrides)), tmp_path)


def only_problem(found: list[str], *parts: str) -> str:
    """The problem that names every one of `parts` (key, value, fix)."""
    hits = [p for p in found if all(part in p for part in parts)]
    assert hits, f"no problem names {parts}: {found}"
    return hits[0]


def command_line_problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        compose(list(overrides))
    return err.value.problems


# --- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (["experiment=smoke", "experiment=rsp_vits16_k400"], ("experiment is given twice", "'smoke'", "give it once")),
        (["cluster=debug", "cluster=local"], ("cluster is given twice", "'debug'", "give it once")),
        (["model.kl_scale=0.1", "model.kl_scale=0.2"], ("model.kl_scale is given twice", "0.2", "give it once")),
        (["experiment=smoke.yaml"], ("experiment='smoke.yaml'", "did you mean experiment=smoke?")),
        (["lr=0.1"], ("lr is not a configuration key", "did you mean optim.lr?")),
        (["model.patch_size=8"], ("model.patch_size", "choose it with model.name")),
        (["data.root=~/videos"], ("data.root=~/videos", "quote the value: 'data.root=\"~/videos\"'")),
        (["name=exp-ü"], ("name=exp-ü", "quote the value: 'name=\"exp-ü\"'")),
        (["model.kl_scale", "0.1"], ("'model.kl_scale'", "write it as model.kl_scale=0.1")),
        (["model.kl_scale=0.1,0.01"], ("model.kl_scale=0.1,0.01", "write a sweep file")),
        (["~model.kl_scale"], ("deletes model.kl_scale", "set it instead (model.kl_scale=VALUE)")),
        (["evaluation.tasks=davis"], ("evaluation.tasks='davis'", "write evaluation.tasks=[davis]")),
        (
            ["model=vit_base"],
            ("model is a section of settings, not one value", "e.g. model.name=vit_base"),
        ),  # was "not a subclass"
    ],
)
def test_command_line_rule(overrides, parts):
    only_problem(command_line_problems(*overrides), *parts)


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--lr", "0.1"], ("--lr 0.1", "write optim.lr=0.1")),
        (["--batch_size", "32"], ("--batch_size 32", "write data.batch_size=32")),
        (["--nodes=2"], ("--nodes=2", "write cluster.nodes=2")),
        (["--data_path", "/d"], ("--data_path /d", "write data.root=/d")),  # the reference's flag name
        (["--dryrun"], ("--dryrun", "did you mean --dry-run?")),
        (
            ["--resume", "ckpt.pth"],
            ("--resume ckpt.pth: runs resume by themselves: submit the same command again",),
        ),  # the reference's flag
    ],
)
def test_unknown_flags_suggest_the_override_form(argv, parts, capsys):
    from launch.submit import main as submit_main

    with pytest.raises(SystemExit) as exit_:  # argparse's own exit: status 2, usage and one message
        submit_main(["experiment=smoke", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert all(part in err for part in parts), err


def test_help_shows_the_override_form(capsys):
    from launch.submit import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "key=value overrides" in out and "optim.lr=0.001" in out and "--dry-run" in out


def test_sweep_and_experiment_on_one_command_line_are_refused(tmp_path):
    rc, out = submit(["sweep=kl_weight", "experiment=smoke", "--dry-run"])
    assert rc == 2 and "experiment=smoke: a sweep's experiment is its file's `experiment:` key; remove" in out
    rc, out = submit(["sweep=kl_weight", "sweep=latent", "--dry-run"])
    assert rc == 2 and "sweep= is given more than once (sweep=kl_weight, sweep=latent)" in out


# --- settings that would be silently ignored -----------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (
            ["schedule.epochs=0"],
            ("schedule.epochs (0.0) is ignored because schedule.total_steps (60) is set", "drop schedule.epochs"),
        ),
        (["schedule.warmup_epochs=5"], ("schedule.warmup_epochs (5.0) is ignored", "schedule.warmup_steps=null")),
        (["optim.blr=3e-4"], ("optim.blr (0.0003) is ignored because optim.lr (0.001) is set", "optim.lr=null")),
        (["model.latent=gaussian", "model.discrete=16"], ("model.discrete (16) is ignored", "set model.latent=discrete")),
        (["model.mae_aux=off", "model.mask_ratio=0.5"], ("model.mask_ratio (0.5) is ignored", "set model.mae_aux=shared")),
        (["model.latent=none", "model.kl_scale=0", "model.kl_freebit=0.5"], ("model.kl_freebit (0.5) is ignored", "drop")),
        (["cluster.partition=gpu"], ("cluster.partition (gpu) is ignored because cluster=local", "use cluster=slurm")),
        (["cluster.mem_gb=16"], ("cluster.mem_gb (16.0) is ignored", "use cluster=slurm")),
        (["runtime.stop_after_steps=60"], ("runtime.stop_after_steps (60) is never reached", "lower it")),
        (["cluster=slurm", "cluster.extra_sbatch.time=60"], ("cluster.extra_sbatch.time (60)", "set cluster.time_minutes")),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides.davis.checkpoint=/x.pt"],
            ("evaluation.overrides.davis.checkpoint (/x.pt) is set by the evaluation job", "remove it"),
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides.davis.data_root=/d"],
            ("evaluation.overrides.davis.data_root (/d)", "set evaluation.data_roots.<task> instead"),
        ),
    ],
)
def test_ignored_setting_is_refused(train_videos, tmp_path, overrides, parts):
    only_problem(problems(cfg_with(tmp_path, train_videos, "experiment=smoke", *overrides)), *parts)


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (["runtime.seed=-1"], ("runtime.seed (-1) must be >= 0", "runtime.seed=0")),
        (["name="], ("name ('') is empty", "pass name=NAME")),
        (["output_root="], ("output_root is empty", "output_root=DIR")),
        (["checkpoint.every_steps=0"], ("checkpoint.every_steps (0) must be >= 1",)),  # no ZeroDivisionError
        (  # every evaluation job failed after training ("no CUDA device")
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.device=cuda"],
            ("evaluation.device=cuda but evaluation.gpus=0", "request GPUs (evaluation.gpus=N)"),
        ),
        (["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.gpus=64"], ("evaluation.gpus (64) exceeds the",)),
        (["optim.lr=nan"], ("optim.lr (nan) must be a finite number",)),  # nan passed every `> 0` rule
        (["model.kl_scale=inf"], ("model.kl_scale (inf) must be a finite number",)),
        (["evaluation.overrides.davis.temperature=nan"], ("evaluation.overrides.davis.temperature (nan) must be a finite",)),
        (["optim.lr=0.001", "optim.min_lr=0.01"], ("optim.min_lr (0.01) must be <= optim.lr (0.001)", "lower optim.min_lr")),
        (["evaluation.device=gpu"], ("evaluation.device ('gpu') must be one of auto, cpu, cuda",)),
        (["evaluation.mem_gb=-4"], ("evaluation.mem_gb (-4.0) must be > 0", "or null")),
        (["evaluation.gpus=-1"], ("evaluation.gpus (-1) must be >= 0",)),
        (["data.max_short_fraction=2"], ("data.max_short_fraction (2.0) must lie in [0, 1]",)),
        (["evaluation.tasks=[davis,davis]", "evaluation.synthetic=true"], ("evaluation.tasks lists davis twice", "once")),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides.davis.num_heads=4"],
            ("num_heads (4) contradicts model.name=rsp_vit_tiny_patch8 (3 heads)", "drop evaluation.overrides.davis.num_heads"),
        ),
    ],
)
def test_field_rule(train_videos, tmp_path, overrides, parts):
    only_problem(problems(cfg_with(tmp_path, train_videos, "experiment=smoke", *overrides)), *parts)


def test_tilde_is_expanded_in_path_fields(train_videos, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(train_videos, tmp_path / "videos")
    cfg = cfg_with(tmp_path, train_videos, 'data.root="~/videos"', 'output_root="~/my runs"')
    assert (cfg.data.root, cfg.output_root) == (str(tmp_path / "videos"), str(tmp_path / "my runs"))
    assert problems(cfg) == []


# --- the data -------------------------------------------------------------------------------------------


def listed_root(tmp_path: Path, n: int = 12, frames: int = 40, extra: list[LabelEntry] = ()) -> Path:
    """A data root whose labels.csv lists `n` videos (empty files: existence is what is checked)."""
    root = tmp_path / "data"
    entries = [LabelEntry(f"train/c{i % 3}/v{i:03d}.mp4", i % 3, f"c{i % 3}", frames) for i in range(n)]
    for e in entries:
        (root / e.path).parent.mkdir(parents=True, exist_ok=True)
        (root / e.path).touch()
    write_labels(root / "labels.csv", [*entries, *extra])
    return root


def data_problems_of(tmp_path: Path, root: Path, *overrides: str) -> list[str]:
    return problems(cfg_with(tmp_path, root, "experiment=smoke", "data.batch_size=2", *overrides))


def test_a_clean_listing_passes(tmp_path):
    assert data_problems_of(tmp_path, listed_root(tmp_path)) == []


def test_videos_missing_from_disk_are_named(tmp_path):
    root = listed_root(tmp_path)
    for p in sorted(root.rglob("*.mp4"))[:2]:
        p.unlink()
    p = only_problem(data_problems_of(tmp_path, root), "2 of the 12 videos", "labels.csv", "restore the files or regenerate")
    assert "train/c0/v000.mp4" in p


def test_a_broken_link_counts_as_missing(tmp_path):
    root = listed_root(tmp_path)
    target = sorted(root.rglob("*.mp4"))[0]
    target.unlink()
    target.symlink_to(root / "gone.mp4")
    only_problem(data_problems_of(tmp_path, root), "1 of the 12 videos", "missing")


def test_existence_is_one_listing_per_folder(tmp_path, monkeypatch):
    root = listed_root(tmp_path, n=30)
    calls = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: calls.append(p) or real(p))  # counted for this test only
    missing, folders = unlisted(root, [f"train/c{i % 3}/v{i:03d}.mp4" for i in range(30)] + ["train/c9/x.mp4", "train/c0"])
    assert len(calls) == 5 and missing == ["train/c9/x.mp4"] and folders == ["train/c0"]  # c0, c1, c2, c9, train


def test_duplicate_entries_are_refused(tmp_path):
    root = listed_root(tmp_path, extra=[LabelEntry("train/c0/v000.mp4", 0, "c0", 40)])
    only_problem(data_problems_of(tmp_path, root), "lists 1 video(s) twice or more", "train/c0/v000.mp4", "list each video once")


def test_a_directory_listed_as_a_video_is_refused(tmp_path):
    root = listed_root(tmp_path, extra=[LabelEntry("train/c0", 0, "c0", 40)])
    only_problem(data_problems_of(tmp_path, root), "directories, not a file", "train/c0", "regenerate")


def test_videos_without_a_frame_pair_are_refused(tmp_path):
    root = listed_root(tmp_path, extra=[LabelEntry("train/c0/v000.mp4x", 0, "c0", 1)])
    (root / "train/c0/v000.mp4x").touch()
    only_problem(data_problems_of(tmp_path, root), "1 video(s)", "fewer than 2 frames", "--min-frames")


def test_impossible_frame_counts_are_refused(tmp_path):
    root = listed_root(tmp_path, extra=[LabelEntry("train/c0/v000.mp4x", 0, "c0", -7)])
    (root / "train/c0/v000.mp4x").touch()
    only_problem(data_problems_of(tmp_path, root), "num_frames below -1", "(-7)", "regenerate")


def test_the_batch_must_fit_the_dataset(tmp_path):
    p = only_problem(data_problems_of(tmp_path, listed_root(tmp_path), "data.batch_size=16"), "data.batch_size (16)")
    assert "lists 12" in p and "lower data.batch_size to at most 12" in p


def test_max_gap_beyond_most_videos_is_refused(tmp_path):
    p = only_problem(
        data_problems_of(tmp_path, listed_root(tmp_path), "data.max_gap=60"), "data.max_gap (60)", "at least 61 frames"
    )
    assert "12 of the 12 videos" in p and "Lower data.max_gap to at most 39" in p and "data.max_short_fraction" in p


def test_a_few_short_videos_are_allowed_and_counted(tmp_path):
    short = [LabelEntry(f"train/c0/short{i}.mp4", 0, "c0", 10) for i in range(1)]
    root = listed_root(tmp_path, n=40, extra=short)
    (root / "train/c0/short0.mp4").touch()
    cfg = cfg_with(tmp_path, root, "experiment=smoke", "data.batch_size=2", "data.max_gap=12")
    assert problems(cfg) == []  # 1 of 41 is below the 5% threshold
    notes = validate([cfg]).notes
    assert any("1 of the 41 videos with a known length have fewer than data.max_gap + 1 = 13 frames" in n for n in notes)


def seek_root(tmp_path: Path, unreadable_by_pyav: int) -> Path:
    """12 videos whose labels record per-decoder seek modes: pyav cannot decode the first few (as
    rsp.probe would record it), torchcodec reads them all, decord was never verified."""
    root = listed_root(tmp_path)
    entries = [
        e._replace(seek_pyav="unreadable" if i < unreadable_by_pyav else "random", seek_torchcodec="sequential")
        for i, e in enumerate(read_labels(root / "labels.csv"))
    ]
    write_labels(root / "labels.csv", entries)
    return root


def test_a_decoder_that_cannot_decode_the_videos_is_refused(tmp_path):
    root = seek_root(tmp_path, unreadable_by_pyav=3)
    p = only_problem(
        data_problems_of(tmp_path, root, "data.decoder=pyav"), "data.decoder (pyav) cannot decode 3 of the 12 videos"
    )
    assert "train/c0/v000.mp4" in p and "data.max_broken_fraction" in p
    assert "Use data.decoder=torchcodec (reads all of them)" in p and "--decoders pyav" in p
    assert data_problems_of(tmp_path, root, "data.decoder=torchcodec") == []


def test_videos_a_decoder_cannot_read_or_never_verified_are_noted(tmp_path):
    root = seek_root(tmp_path, unreadable_by_pyav=0)
    entries = read_labels(root / "labels.csv")
    write_labels(root / "labels.csv", [*entries[:-1], entries[-1]._replace(seek_pyav="unreadable")])
    for decoder, note in [
        ("pyav", "1 of the 12 videos"),
        ("decord", "12 of the 12 videos"),
    ]:
        cfg = cfg_with(
            tmp_path, root, "experiment=smoke", "data.batch_size=2", "data.max_broken_fraction=0.1", f"data.decoder={decoder}"
        )
        assert problems(cfg) == []  # 1 of 12 is within data.max_broken_fraction 0.1
        notes = validate([cfg]).notes
        assert any(note in n for n in notes), notes
    assert any("no verified seek mode for data.decoder=decord" in n for n in notes)


def test_the_reference_pickle_is_accepted(tmp_path):
    root = listed_root(tmp_path)
    (root / "labels.csv").unlink()
    (root / "labels").mkdir()
    listed = [(i % 3, f"train/c{i % 3}/v{i:03d}.mp4") for i in range(12)]
    (root / "labels" / "label_full_1.0.pickle").write_bytes(pickle.dumps(listed))
    assert data_problems_of(tmp_path, root, "data.labels=labels/label_full_1.0.pickle") == []


def test_a_generated_set_must_fit_the_batch(tmp_path):
    cfg = cfg_with(tmp_path, tmp_path / "gen", "experiment=smoke", "data.synthetic_videos=4")
    only_problem(
        problems(cfg), "data.batch_size (8)", "data.synthetic_videos (4) generates only that many", "data.synthetic_videos >= 8"
    )


def test_a_run_whose_kept_checkpoints_exceed_the_free_space_is_refused(tmp_path):
    """Checked against the real free space under output_root: a milestone every step of 10^7 steps
    would keep 10^7 checkpoints, more than any disk here holds; the smoke defaults fit."""
    steps = ("schedule.total_steps=10000000", "checkpoint.every_steps=1", "checkpoint.milestone_every_steps=1")
    cfg = cfg_with(tmp_path, tmp_path / "gen", "experiment=smoke", "data.synthetic_videos=16", *steps)
    only_problem(problems(cfg), f"output_root ({cfg.output_root}) has", "iB free", "milestone(s) over 10000000 steps")
    fits = cfg_with(tmp_path, tmp_path / "gen", "experiment=smoke", "data.synthetic_videos=16")
    assert not [p for p in problems(fits) if "iB free" in p]


def test_a_max_gap_beyond_the_generated_videos_length_is_refused(tmp_path):
    frames = SCENE_SIZES["shapes"][2]
    cfg = cfg_with(
        tmp_path,
        tmp_path / "gen",
        "experiment=smoke",
        "data.synthetic_videos=16",
        "data.synthetic_scene=shapes",
        f"data.max_gap={10 * frames}",
    )
    only_problem(problems(cfg), f"data.max_gap ({10 * frames})", f"have {frames} frames each", f"at most {frames - 1}")
    fits = cfg_with(
        tmp_path,
        tmp_path / "gen",
        "experiment=smoke",
        "data.synthetic_videos=16",
        "data.synthetic_scene=shapes",
        f"data.max_gap={frames - 1}",
    )
    assert not [p for p in problems(fits) if "data.max_gap" in p]


def test_an_existing_dataset_of_another_size_is_not_silently_used_as_the_generated_one(tmp_path):
    root = listed_root(tmp_path)
    cfg = cfg_with(tmp_path, root, "experiment=smoke", "data.synthetic_videos=48", "data.batch_size=2")
    only_problem(
        problems(cfg), "data.synthetic_videos (48)", "one of 12 videos", "data.synthetic_videos=0 (it is not a generated"
    )
    generated = tmp_path / "generated"
    generate_dataset(generated, 3, num_classes=1, height=32, width=48, num_frames=6, scene="camouflage")
    cfg = cfg_with(tmp_path, generated, "experiment=smoke", "data.synthetic_videos=48", "data.batch_size=2")
    only_problem(problems(cfg), "one of 3 videos", "data.synthetic_videos=3 to train on it")


# --- a refused submit creates nothing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["model.kl_scale=-1"],  # a field rule
        ["data.synthetic_videos=4"],  # the generated set would not fit the batch: nothing is generated
        ["evaluation.synthetic=false"],  # evaluation roots missing: no generated benchmark either
    ],
)
def test_a_refused_submit_creates_nothing_on_disk(tmp_path, extra):
    args = [
        "experiment=smoke",
        f"data.root={tmp_path / 'gen'}",
        f"output_root={tmp_path / 'runs'}",
        *[f"evaluation.data_roots.{t}={tmp_path / t}" for t in ("davis", "photo_davis", "jhmdb", "vip")],
        *extra,
        "--no-wait",
    ]
    rc, out = submit(args)
    assert rc == 2 and "nothing was submitted" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused submit left files behind"


def test_a_new_run_beside_one_of_the_same_name_says_it_starts_at_step_0(train_videos, tmp_path):
    """Raising schedule.total_steps "to train longer" started a new run from step 0 without a word."""
    first = cfg_with(tmp_path, train_videos, "experiment=smoke", "schedule.total_steps=40")
    RunDirectory.for_config(first).create(first)
    longer = validate([cfg_with(tmp_path, train_videos, "experiment=smoke", "schedule.total_steps=80")])
    assert longer.problems == []
    (warning,) = [w for w in longer.warnings if "of the same name" in w]
    assert "(schedule.total_steps: 40 != 80)" in warning and "this is a new run and trains from step 0" in warning
    assert not [w for w in validate([first]).warnings if "of the same name" in w]  # the run itself, submitted again
