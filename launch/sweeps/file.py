"""A sweep file read and checked the way a config is: YAML syntax (with the line), structure, types,
name-template keys, per-value overrides, duplicates. Every problem of the file is reported in one
message, naming where it is, the value, the rule and the fix, before anything is composed or
planned (launch/sweeps/expand.py expands what `read_sweep_file` returns).

The top-level keys are a table (`TOP_LEVEL`): each key's meaning and the function that checks it.
A new key is one entry there plus its checker; `read_sweep_file` needs no change. A checker gets
the raw value and a `Reading` (the problems found so far and what other keys parsed) and returns
the parsed value.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from core.commandline import unknown_key_hint
from core.schema import field_type, schema_keys, value_fits
from launch.config import RunConfig, check_overrides, options
from launch.sweeps.selection import Selection, parse_selection

AXIS_FIELDS = ("key", "values", "zip", "overrides")
EXAMPLE_AXES = "axes:\n  - key: model.kl_scale\n    values: [0.0, 0.01]"


@dataclass
class Axis:
    columns: dict[str, list]  # key -> its values (one key; several advancing together for a zip)
    per_value: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)  # str(listed value) -> [(key, value)]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, combo, strict=True)) for combo in zip(*self.columns.values(), strict=True)]


@dataclass
class Reading:
    """The state of reading one file: every problem found, and what keys parsed so far (in TOP_LEVEL order)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    parsed: dict[str, Any] = field(default_factory=dict)
    keys: list[str] = field(default_factory=lambda: schema_keys(RunConfig))

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)


# --- one checker per top-level key -------------------------------------------------------------------


def check_description(raw: Any, r: Reading) -> str:
    if not isinstance(raw, str):
        r.add("description", f"must be text, got {type(raw).__name__} {raw!r}")
    return str(raw)


def check_experiment(raw: Any, r: Reading) -> str:
    if not isinstance(raw, str) or raw not in options("experiment"):
        r.add("experiment", f"{raw!r} is not one of: {', '.join(options('experiment'))}")
    return str(raw)


def check_overrides_list(raw: Any, r: Reading) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        r.add("overrides", f"must be a list of key=value strings, e.g. [cluster=slurm, data.root=/data], got {raw!r}")
        return []
    for item in raw:
        if item.partition("=")[0].lstrip("+") == "experiment":
            r.add("overrides", f"{item!r} sets the experiment, which the sweep's `experiment:` key sets once; move it there")
    r.problems += check_overrides([o for o in raw if o.partition("=")[0].lstrip("+") != "experiment"], where="overrides: ")
    return list(raw)


def check_name(raw: Any, r: Reading) -> str:
    """A str.format template over the run's settings: {model.kl_scale}, {data.max_gap:03d}, ..."""
    if not isinstance(raw, str):
        r.add("name", f'must be a text template such as "kl{{model.kl_scale}}", got {raw!r}')
        return str(raw)
    try:
        fields = [(f, spec) for _, f, spec, _ in string.Formatter().parse(raw) if f is not None]
    except ValueError as exc:  # unbalanced braces
        r.add(
            "name", f"{raw!r} is not a valid template ({exc}); write keys as {{section.key}} and a literal brace as {{{{ or }}}}"
        )
        return raw
    for name, spec in fields:
        if not name or name.isdigit() or "[" in name:
            r.add("name", f"{{{name}}} in {raw!r} must name a setting, e.g. {{model.kl_scale}}")
        elif name not in r.keys:
            section = any(k.startswith(f"{name}.") for k in r.keys)
            hint = f"; {{{name}}} is a whole section: name one of its keys" if section else unknown_key_hint(name, r.keys)
            r.add("name", f"{{{name}}} in {raw!r} is not a configuration key{hint}")
        elif spec:
            _check_format_spec(name, spec, raw, r)
    return raw


def _check_format_spec(name: str, spec: str, template: str, r: Reading) -> None:
    values = [v for axis in r.parsed.get("axes") or [] for v in axis.columns.get(name, [])]
    for value in values or [getattr_dotted(RunConfig(), name)]:
        try:
            format(value, spec)
        except (ValueError, TypeError) as exc:
            r.add("name", f"{{{name}:{spec}}} in {template!r} cannot format {value!r} ({exc})")
            return


def getattr_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_axes(raw: Any, r: Reading) -> list[Axis]:
    if isinstance(raw, dict) and set(raw) & set(AXIS_FIELDS):  # one axis without its dash
        listed = "\n".join(f"{'  - ' if i == 0 else '    '}{k}: {v}" for i, (k, v) in enumerate(raw.items()))
        r.add("axes", f"must be a list of axes: begin each axis with a dash; write\naxes:\n{listed}")
        return []
    if isinstance(raw, dict):
        listed = "\n".join(f"  - key: {k}\n    values: {v}" for k, v in list(raw.items())[:2])
        r.add("axes", f"must be a list of axes, not a mapping; write\naxes:\n{listed}")
        return []
    if not isinstance(raw, list) or not raw:
        r.add("axes", f"must be a non-empty list of axes (the runs are their product), e.g.\n{EXAMPLE_AXES}")
        return []
    axes, owner = [], {}
    for i, entry in enumerate(raw):
        axis = _check_axis(entry, f"axes[{i}]", r)
        if axis is None:
            continue
        for key in axis.columns:
            if key in owner:
                r.add(
                    f"axes[{i}]",
                    f"{key} is also swept by axes[{owner[key]}]; an axis key may appear once (zip them to advance together)",
                )
            owner.setdefault(key, i)
        axes.append(axis)
    for i, axis in enumerate(axes):
        for assignments in axis.per_value.values():
            for key, _ in assignments:
                if key in owner and key not in axis.columns:
                    r.add(
                        f"axes[{i}].overrides", f"{key} is swept by axes[{owner[key]}]; a per-value override may not set it too"
                    )
    return axes


def _check_axis(entry: Any, where: str, r: Reading) -> Axis | None:
    if not isinstance(entry, dict):
        r.add(where, f"must be a mapping with key + values (or zip), got {entry!r}; e.g.\n{EXAMPLE_AXES}")
        return None
    for name in entry:
        if name not in AXIS_FIELDS:
            close = difflib.get_close_matches(str(name), AXIS_FIELDS, n=1)
            r.add(
                where,
                f"unknown field {name!r}" + (f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(AXIS_FIELDS)}"),
            )
    if "zip" in entry and ("key" in entry or "values" in entry):
        r.add(where, "has both key/values and zip; an axis is either one key with its values, or zip: {key: [values], ...}")
        return None
    if "zip" in entry:
        if not isinstance(entry["zip"], dict) or not entry["zip"]:
            r.add(f"{where}.zip", f"must map keys to lists of values, got {entry['zip']!r}")
            return None
        columns = entry["zip"]
    elif "key" in entry:
        columns = {entry["key"]: entry.get("values")}
    else:
        r.add(where, f"needs key + values, or zip: {{key: [values], ...}}; e.g.\n{EXAMPLE_AXES}")
        return None
    before = len(r.problems)
    for key, values in columns.items():
        _check_column(str(key), values, where, r)
    lengths = {k: len(v) for k, v in columns.items() if isinstance(v, list)}
    if len(set(lengths.values())) > 1:
        r.add(where, f"zips lists of different lengths {lengths}; zipped lists advance together, give each the same length")
    if len(r.problems) > before:
        return None
    axis = Axis({str(k): list(v) for k, v in columns.items()})
    rows = [tuple(row.values()) for row in axis.rows]
    repeated = sorted({str(row[0] if len(row) == 1 else row) for row in rows if rows.count(row) > 1})
    if repeated:
        r.add(
            where,
            f"lists {', '.join(repeated)} more than once (1 and 1.0 are the same value); "
            "the runs would be the same: list each once",
        )
    axis.per_value = _check_per_value(entry.get("overrides"), axis, f"{where}.overrides", r)
    return axis


def _check_column(key: str, values: Any, where: str, r: Reading) -> None:
    if key not in r.keys:
        r.add(where, f"{key} is not a configuration key{unknown_key_hint(key, r.keys)}")
        return
    if not isinstance(values, list):
        r.add(where, f"{key} needs a list of values, e.g. values: [0.0, 0.01], got {values!r}")
        return
    if not values:
        r.add(where, f"{key} has no values (an empty axis yields no runs); list at least one")
        return
    hint = field_type(RunConfig, key)
    for value in values:
        if not value_fits(hint, value):
            r.add(where, wrong_type(key, value, hint))


def wrong_type(key: str, value: Any, hint: Any) -> str:
    """Why `value` cannot be `key`'s; for a number YAML read as text (`1e-3`: YAML 1.1, which PyYAML
    reads, takes a float only with a dot and a signed exponent), the spelling it reads as a number."""
    message = f"{key}={value!r} has the wrong type (expected {getattr(hint, '__name__', hint)})"
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else None
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite() and value_fits(hint, float(number)):
        message += f": YAML reads {value} as text; write {format(number, 'f')} (or 1.0e-3 style: a dot and a signed exponent)"
    return message


def _check_per_value(raw: Any, axis: Axis, where: str, r: Reading) -> dict[str, list[tuple[str, Any]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.add(
            where,
            f"must be a mapping from a value of the axis to a list of key=value, e.g. {{0.0: [model.kl_freebit=0]}}, got {raw!r}",
        )
        return {}
    listed = [v for values in axis.columns.values() for v in values]
    out = {}
    for value, texts in raw.items():
        match = next((v for v in listed if v == value and type(v) is not bool or v is value), None)
        if match is None:
            shown = ", ".join(map(str, listed))
            r.add(
                where,
                f"{value!r} is not a value of the axis ({', '.join(axis.columns)}: {shown}), "
                f"so its overrides would never apply; use one of {shown}",
            )
            continue
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            r.add(f"{where}.{value}", f"must be a list of key=value strings, e.g. [model.kl_freebit=0], got {texts!r}")
            continue
        out[str(match)] = [a for text in texts if (a := _assignment(text, axis, f"{where}.{value}", r)) is not None]
    return out


def _assignment(text: str, axis: Axis, where: str, r: Reading) -> tuple[str, Any] | None:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        r.add(where, f"{text!r} is not of the form key=value")
        return None
    if key not in r.keys:
        r.add(where, f"{key} is not a configuration key{unknown_key_hint(key, r.keys)}")
        return None
    if key in axis.columns:
        r.add(where, f"{text!r} sets {key}, the axis' own key, which its value already sets; remove it")
        return None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        r.add(where, f"the value of {text!r} is not valid YAML ({str(exc).splitlines()[0]})")
        return None
    hint = field_type(RunConfig, key)
    if not value_fits(hint, value):
        r.add(where, wrong_type(key, value, hint))
        return None
    return key, value


def check_select(raw: Any, r: Reading) -> Selection | None:
    """Successive halving (launch/sweeps/selection.py): the block's own rules here; whether each run
    evaluates the metric's task and has the rungs as milestones is checked when the runs are
    composed (launch/plan.py)."""
    if raw is None:
        return None
    selection, problems = parse_selection(raw)
    r.problems += problems
    return selection


# --- the file -----------------------------------------------------------------------------------------

REQUIRED = object()  # TOP_LEVEL default of a key every sweep file must have
# key -> (meaning, checker, value when absent). Checked in this order (name after axes: its format
# specs are tried on the axes' values). None for name: the file's stem plus the model name.
TOP_LEVEL: dict[str, tuple[str, Callable[[Any, Reading], Any], Any]] = {
    "description": ("what the sweep is for", check_description, ""),
    "experiment": ("the base experiment (experiments/experiment/*.yaml)", check_experiment, "smoke"),
    "overrides": ("key=value for every run (Hydra syntax, groups allowed)", check_overrides_list, []),
    "axes": ("the swept keys; the runs are their product", check_axes, REQUIRED),
    "name": ("the run name template, {section.key} is the run's value", check_name, None),
    "select": ("successive halving on a milestone metric (docs/sweeps.md)", check_select, None),
}


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first at line {seen[key] + 1}); give it once", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> tuple[Any, str | None]:
    """(the file's content, None) or (None, why it is not valid YAML, with the line)."""
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader), None
    except yaml.MarkedYAMLError as exc:
        mark, lines = exc.problem_mark, path.read_text().splitlines()
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        at = [m.line for m in (mark, exc.context_mark) if m is not None and m.line < len(lines) and lines[m.line].strip()]
        line = lines[at[0]].strip() if at else ""
        shown = f" (in {line!r})" if line else ""
        context = f", {exc.context} at line {exc.context_mark.line + 1}" if exc.context and exc.context_mark else ""
        syntax = "; fix the syntax (indent with spaces, close brackets and quotes)"
        fix = "" if isinstance(exc, yaml.constructor.ConstructorError) else syntax
        return None, f"not valid YAML at {where}{context}: {exc.problem}{shown}{fix}"
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        return None, f"cannot be read as YAML ({exc})"


def read_sweep_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(each top-level key's parsed value, every problem of the file)."""
    raw, error = load_yaml(path)
    r = Reading(path)
    if error:
        return {}, [error]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return {}, [
            f"must be a mapping of {', '.join(TOP_LEVEL)}, got a {type(raw).__name__}; e.g.\nexperiment: smoke\n{EXAMPLE_AXES}"
        ]
    for key in raw:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(str(key), TOP_LEVEL, n=1)
            r.add(
                "",
                f"unknown top-level key {key!r}"
                + (f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(TOP_LEVEL)}"),
            )
    for key, (meaning, checker, default) in TOP_LEVEL.items():
        if key in raw:
            r.parsed[key] = checker(raw[key], r)
        elif default is REQUIRED:
            example = f", e.g.\n{EXAMPLE_AXES}" if key == "axes" else ""
            r.add("", f"no {key}: a sweep file needs it ({meaning}){example}")
            r.parsed[key] = None
        else:
            r.parsed[key] = default
    return r.parsed, list(dict.fromkeys(r.problems))
