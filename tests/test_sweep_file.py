"""Sweep files are checked like configs (launch/sweeps/file.py), one test per rule: every problem of
the file in one message naming where it is, the value and the fix, no traceback, before anything is
planned; and a new top-level key is one entry of TOP_LEVEL."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.schema import ConfigError
from launch.sweeps.expand import expand, load_sweep, sweep_path
from launch.sweeps.file import TOP_LEVEL, read_sweep_file
from testkit.launching import submit

HEAD = "experiment: smoke\n"
AXIS = "axes:\n  - key: model.kl_scale\n    values: [0.1, 0.2]\n"


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_sweep(str(path))
    assert "nothing was planned or submitted" in str(err.value)
    return err.value.problems


def only_problem(found: list[str], *parts: str) -> str:
    hits = [p for p in found if all(part in p for part in parts)]
    assert hits, f"no problem names {parts}: {found}"
    return hits[0]


@pytest.mark.parametrize(
    "text, parts",
    [
        # YAML itself
        (
            HEAD + "axes:\n  - key: model.kl_scale\n    values: [0.1, 0.2\n",
            ("flow sequence at line 4", "(in 'values: [0.1, 0.2')", "close brackets"),
        ),
        (HEAD + "axes:\n\t- key: model.kl_scale\n", ("not valid YAML at line 3", "'\\t'", "indent with spaces")),
        (
            HEAD + AXIS + "axes:\n  - key: model.kl_freebit\n    values: [0.1]\n",
            ("key 'axes' is given twice", "first at line 2", "give it once"),
        ),
        ("- experiment: smoke\n", ("must be a mapping", "got a list", "experiment: smoke")),
        # structure
        (HEAD, ("no axes", "- key: model.kl_scale")),
        (HEAD + "axes: []\n", ("axes: must be a non-empty list", "- key:")),
        (
            HEAD + "axes:\n  model.kl_scale: [0.1, 0.2]\n",
            ("axes: must be a list of axes, not a mapping", "- key: model.kl_scale"),
        ),
        (HEAD + "axis:\n  - key: model.kl_scale\n    values: [1]\n", ("unknown top-level key 'axis'", "did you mean axes?")),
        (HEAD + "axes:\n  - model.kl_scale\n", ("axes[0]: must be a mapping", "'model.kl_scale'", "- key:")),
        (HEAD + "axes:\n  - values: [0.1]\n", ("axes[0]: needs key + values, or zip",)),
        (HEAD + "axes:\n  - key: model.kl_scale\n    value: [0.1]\n", ("axes[0]: unknown field 'value'", "did you mean values?")),
        (
            HEAD + "axes:\n  - key: model.kl_scale\n    values: [0.1]\n    zip: {data.max_gap: [8]}\n",
            ("axes[0]: has both key/values and zip",),
        ),
        # keys and values
        (
            HEAD + "axes:\n  - key: model.kl_scal\n    values: [0.1]\n",
            ("axes[0]: model.kl_scal is not a configuration key", "did you mean model.kl_scale?"),
        ),
        (HEAD + "axes:\n  - key: model.kl_scale\n    values: []\n", ("model.kl_scale has no values", "list at least one")),
        (  # the dash forgotten: the fix offered used to be "- key: key" and "- key: values"
            HEAD + "axes:\n  key: model.kl_scale\n  values: [0.1, 0.2]\n",
            ("begin each axis with a dash", "axes:\n  - key: model.kl_scale\n    values: [0.1, 0.2]"),
        ),
        (HEAD + "axes:\n  - key: model.kl_scale\n    values: 0.1\n", ("model.kl_scale needs a list of values", "got 0.1")),
        (
            HEAD + "axes:\n  - key: model.kl_scale\n    values: [0.1, high]\n",
            ("model.kl_scale='high' has the wrong type (expected float)",),
        ),
        (  # YAML 1.1 reads 1e-3 as text: the type error alone left the user staring at a number
            HEAD + "axes:\n  - key: model.kl_scale\n    values: [0.1, 1e-5]\n",
            ("model.kl_scale='1e-5' has the wrong type", "YAML reads 1e-5 as text; write 0.00001"),
        ),
        (
            HEAD + "axes:\n  - key: model.kl_scale\n    values: [1, 1.0]\n",
            ("axes[0]: lists 1", "more than once", "list each once"),
        ),
        (
            HEAD + AXIS + "  - key: model.kl_scale\n    values: [0.3]\n",
            ("axes[1]: model.kl_scale is also swept by axes[0]", "zip them"),
        ),
        (
            HEAD + "axes:\n  - zip:\n      model.kl_scale: [0.1, 0.2]\n      data.max_gap: [8]\n",
            ("zips lists of different lengths", "same length"),
        ),
        # the name template
        (HEAD + 'name: "kl{model.kl_scal}"\n' + AXIS, ("name: {model.kl_scal}", "did you mean model.kl_scale?")),
        (HEAD + 'name: "kl{model.kl_scale"\n' + AXIS, ("name: 'kl{model.kl_scale' is not a valid template", "{section.key}")),
        (HEAD + 'name: "kl{}"\n' + AXIS, ("name: {} in 'kl{}' must name a setting", "{model.kl_scale}")),
        (HEAD + 'name: "kl{model}"\n' + AXIS, ("name: {model}", "whole section")),
        (HEAD + 'name: "{model.kl_scale:d}"\n' + AXIS, ("{model.kl_scale:d}", "cannot format 0.1")),
        # per-value overrides
        (
            HEAD + AXIS + "    overrides:\n      0.3: [model.kl_freebit=0]\n",
            ("0.3 is not a value of the axis", "use one of 0.1, 0.2"),
        ),
        (
            HEAD + AXIS + "    overrides:\n      0.1: [model.kl_frebit=0]\n",
            ("model.kl_frebit is not a configuration key", "model.kl_freebit"),
        ),
        (
            HEAD + AXIS + "    overrides:\n      0.1: model.kl_freebit=0\n",
            ("axes[0].overrides.0.1: must be a list", "[model.kl_freebit=0]"),
        ),
        (HEAD + AXIS + "    overrides:\n      0.1: [model.kl_freebit]\n", ("'model.kl_freebit' is not of the form key=value",)),
        (HEAD + AXIS + "    overrides:\n      0.1: [model.kl_freebit=abc]\n", ("model.kl_freebit='abc' has the wrong type",)),
        (
            HEAD + AXIS + "    overrides:\n      0.1: [model.kl_scale=0.5]\n",
            ("sets model.kl_scale, the axis' own key", "remove it"),
        ),
        (
            HEAD + AXIS + "    overrides: [model.kl_freebit=0]\n",
            ("axes[0].overrides: must be a mapping", "{0.0: [model.kl_freebit=0]}"),
        ),
        (
            HEAD + AXIS + "    overrides:\n      0.1: [data.max_gap=9]\n  - key: data.max_gap\n    values: [8, 12]\n",
            ("data.max_gap is swept by axes[1]", "may not set it too"),
        ),
        # the other top-level keys
        ("experiment: smok\n" + AXIS, ("experiment: 'smok' is not one of", "smoke")),
        (HEAD + "overrides: cluster=slurm\n" + AXIS, ("overrides: must be a list", "[cluster=slurm, data.root=/data]")),
        (
            HEAD + "overrides: [model.kl_scal=1]\n" + AXIS,
            ("overrides: model.kl_scal is not a configuration key", "model.kl_scale"),
        ),
        (
            HEAD + "overrides: [experiment=rsp_vits16_k400]\n" + AXIS,
            ("sets the experiment", "`experiment:` key", "move it there"),
        ),
        (HEAD + "description: [a, b]\n" + AXIS, ("description: must be text",)),
    ],
)
def test_sweep_file_rule(tmp_path, text, parts):
    only_problem(problems_of(tmp_path, text), *parts)


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    found = problems_of(
        tmp_path,
        HEAD
        + 'name: "{model.kl_scal}"\naxes:\n  - key: model.kl_scal\n    values: [0.1]\n  - key: data.max_gap\n    values: []\n',
    )
    assert len(found) == 3 and any("axes[1]" in p for p in found) and any(p.startswith("name:") for p in found)


def test_a_malformed_sweep_submits_nothing_and_prints_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + "axes:\n  model.kl_scale: [0.1, 0.2]\n")
    rc, out = submit([f"sweep={path}", f"output_root={tmp_path / 'runs'}"])
    assert rc == 2 and "Traceback" not in out and "axes: must be a list of axes" in out
    assert not (tmp_path / "runs").exists()


def test_a_folder_named_like_a_sweep_file_is_called_a_folder(tmp_path):
    (tmp_path / "s.yaml").mkdir()
    with pytest.raises(ConfigError) as err:
        sweep_path(str(tmp_path / "s.yaml"))
    assert "is a directory, not a sweep file" in str(err.value)


def test_per_value_overrides_match_the_value_whatever_its_spelling(tmp_path):
    """An override keyed 0 for the listed value 0.0 applies (it is the same number)."""
    path = tmp_path / "s.yaml"
    path.write_text(
        HEAD + "axes:\n  - key: model.kl_scale\n    values: [0.0, 0.1]\n    overrides:\n      0: [model.kl_freebit=0]\n"
    )
    runs = expand(load_sweep(str(path)), ["evaluation.tasks=[]"])
    assert {r.cfg.model.kl_scale: r.cfg.model.kl_freebit for r in runs} == {0.0: 0.0, 0.1: 0.1}


def test_a_command_line_override_of_a_swept_key_is_refused(tmp_path):
    """The axes are applied after the command line's overrides: optim.lr=0.5 beside an lr axis was ignored."""
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + AXIS + "    overrides:\n      0.1: [model.kl_freebit=0]\n")
    sweep = load_sweep(str(path))
    with pytest.raises(ConfigError) as err:
        expand(sweep, ["model.kl_scale=0.5", "model.kl_freebit=0.2", "optim.lr=0.1"])
    assert len(err.value.problems) == 2 and "nothing was submitted" in str(err.value)
    only_problem(err.value.problems, "model.kl_scale=0.5: sweep s sets model.kl_scale for every run", "would be ignored")
    only_problem(err.value.problems, "model.kl_freebit=0.2: sweep s sets model.kl_freebit")


def test_a_new_top_level_key_is_one_table_entry(tmp_path, monkeypatch):
    """How a new top-level block (e.g. a sweep's `select:`) plugs in: a checker in TOP_LEVEL, nothing else."""

    def check_select(raw, reading):
        if not isinstance(raw, dict):
            reading.add("select", f"must be a mapping, got {raw!r}")
        return raw

    monkeypatch.setitem(TOP_LEVEL, "select", ("which runs survive", check_select, None))  # this project's table
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + AXIS + "select: 3\n")
    parsed, found = read_sweep_file(path)
    assert found == ["select: must be a mapping, got 3"] and parsed["select"] == 3
    path.write_text(HEAD + AXIS + "select: {metric: davis}\n")
    assert read_sweep_file(path)[1] == []
