"""What users type on a `key=value` command line instead of what they mean, and the hint that gets
them there: `--lr 0.1` means `optim.lr=0.1`, `lr=0.1` means `optim.lr=0.1`, `model.kl_scale 0.1`
means `model.kl_scale=0.1`, and a value with characters the override grammar does not take
unquoted (`~`, non-ASCII letters, quotes, `#`, brackets, ...) must be quoted.

Pure string logic over a schema's dotted keys (core.schema.schema_keys), shared by every command
line of the project: launch/submit.py, launch/status.py, launch/results.py, eval/aggregate.py, python -m eval.run,
python -m launch.evaluations. `HintingArgumentParser` is argparse with these hints on unknown
arguments (exit status 2, one message, as argparse's own errors).
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from collections.abc import Sequence

PROJECT_PACKAGES = (
    "core",
    "rsp",
    "launch",
    "eval",
    "localslurm",
    "testkit",
)  # a missing one of these is a bug, not the environment

# Flags of the reference's main_pretrain_rsp.py (and common spellings) whose name is not the leaf of
# the key they set; every other flag is matched on the leaf (--batch_size -> data.batch_size).
FLAG_ALIASES = {
    "data_path": "data.root",
    "model": "model.name",
    "input_size": "model.img_size",
    "max_distance": "data.max_gap",
    "epochs": "schedule.epochs",
    "checkpoint_every": "checkpoint.every_steps",
    "pin_mem": "data.pin_memory",
    "output_dir": "output_root",
    "log_dir": "output_root",
    "gpus": "cluster.gpus_per_node",
}
# Flags of the reference with no key here, because the launcher does what they did: the answer instead.
FLAG_ANSWERS = {
    "resume": "runs resume by themselves: submit the same command again (an interrupted run continues from its "
    "last checkpoint, a finished one starts nothing)",
}
# Keys a user may try to set that are derived from another one: the message says where they come from.
DERIVED = {
    "patch_size": "the patch size is part of the architecture: choose it with model.name (e.g. rsp_vit_small_patch8); "
    "evaluation reads it from the checkpoint's weights",
    "embed_dim": "the width is part of the architecture: choose it with model.name",
    "depth": "the depth is part of the architecture: choose it with model.name",
    "world_size": "the world size is cluster.nodes x cluster.tasks_per_node (or cluster.gpus_per_node)",
}


def close_keys(key: str, keys: Sequence[str], n: int = 3) -> list[str]:
    """The dotted keys of `keys` that `key` most likely means: same leaf first (`lr` -> optim.lr,
    `batch_size` -> data.batch_size), then the closest spellings of the whole key and of the leaf."""
    key = key.strip().lstrip("-+~").replace("-", "_")
    leaf = key.rsplit(".", 1)[-1]
    if key in FLAG_ALIASES and FLAG_ALIASES[key] in keys:
        return [FLAG_ALIASES[key]]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
    if same_leaf:
        return same_leaf[:n]
    whole = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if whole:
        return whole
    leaves: dict[str, list[str]] = {}
    for k in keys:
        leaves.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    return [k for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75) for k in leaves[m]][:n]


def unknown_key_hint(key: str, keys: Sequence[str]) -> str:
    """'; did you mean optim.lr?' (or why the key cannot be set, or nothing)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in DERIVED:
        return f"; {DERIVED[leaf]}"
    close = close_keys(key, keys)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def quote_value(value: str) -> str:
    """`value` as a quoted string of the override grammar: "..." unless it holds a double quote."""
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quoted_override(item: str) -> str:
    """The shell word that passes override `item` with its value quoted: data.root=~/x -> 'data.root="~/x"'."""
    key, _, value = item.partition("=")
    return shlex.quote(f"{key}={quote_value(value)}")


def syntax_hint(item: str, lexer_message: str, following: str | None = None) -> str:
    """The fix for an override the grammar could not parse: `key value` written for `key=value`,
    or a value to quote (with the exact quoted form)."""
    if "=" not in item:
        if following is not None and "=" not in following and not following.startswith("-"):
            return f"write it as {item}={following} (key=value, no space)"
        return f"write it as {item}=VALUE"
    key, _, value = item.partition("=")
    if "," in value and not any(c in value for c in "[]{}\"'"):
        return (
            f"several values ({value}) are a sweep: write a sweep file (sweeps/*.yaml, `sweep=NAME`), "
            f"or quote the value if the comma belongs to it: {quoted_override(item)}"
        )
    return (
        f"quote the value: {quoted_override(item)} "
        "(the override grammar takes `~`, non-ASCII letters, quotes, #, (), [], {} only quoted)"
    )


def flag_hint(flag: str, value: str | None, keys: Sequence[str]) -> str:
    """`--lr` (+ `0.1`) -> "optim.lr=0.1"; empty when no key matches."""
    name, eq, inline = flag.partition("=")
    value = inline if eq else value
    close = close_keys(name, keys, n=2)
    if not close:
        return ""
    shown = value if value is not None else ("true" if len(close) == 1 else "VALUE")
    return " or ".join(f"{k}={shown}" for k in close)


class HintingArgumentParser(argparse.ArgumentParser):
    """argparse whose "unrecognized arguments" error says what was meant: an option of this parser
    (--wacth -> --watch), the override form of a flag (--lr 0.1 -> optim.lr=0.1, over `keys`), or an
    option written as key=value (out=x -> --out x)."""

    def __init__(self, *args, keys: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.override_keys = list(keys)

    def parse_args(self, args=None, namespace=None):
        return self._checked(args, self.parse_known_args, namespace)

    def parse_intermixed_args(self, args=None, namespace=None):
        return self._checked(args, self.parse_known_intermixed_args, namespace)

    def _checked(self, args, parse, namespace):
        argv = list(sys.argv[1:] if args is None else args)
        ns, extras = parse(argv, namespace)
        if extras:
            self.error(self.unrecognized_message(argv, extras))
        return ns

    def unrecognized_message(self, argv: list[str], extras: list[str]) -> str:
        options = list(dict.fromkeys(s for a in self._all_actions(argv) for s in a.option_strings if s.startswith("--")))
        lines, consumed = [], set()
        for extra in extras:
            if extra in consumed:
                continue
            index = argv.index(extra) if extra in argv else -1
            following = argv[index + 1] if 0 <= index < len(argv) - 1 else None
            if following is not None and (following.startswith("-") or "=" in following):
                following = None
            hint, used = self.hint_for(extra, following, options)
            if used and following is not None:
                consumed.add(following)
            lines.append(f"{extra}{' ' + following if used and following else ''}: {hint}")
        return "unrecognized arguments:\n  " + "\n  ".join(lines)

    def _all_actions(self, argv: Sequence[str] = ()) -> list[argparse.Action]:
        """This parser's actions and its subcommands' (unknown arguments of a subcommand reach this
        parser): only the chosen subcommand's when `argv` names one (`backfill --step 4` used to be
        answered "did you mean --step?", an option of `schedule`)."""
        out = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = [name for name in action.choices if name in argv][:1] or list(action.choices)
                out += [a for name in chosen for a in action.choices[name]._actions]
        return out

    def hint_for(self, extra: str, following: str | None, options: list[str]) -> tuple[str, bool]:
        """(the hint for one unrecognized argument, whether it used the value that follows it)."""
        name = extra.partition("=")[0]
        if extra.startswith("-"):
            leaf = name.lstrip("-").replace("-", "_")
            if leaf in FLAG_ANSWERS and self.override_keys:  # a front door that takes overrides: submit
                return FLAG_ANSWERS[leaf], following is not None and "=" not in extra
            exact = leaf in FLAG_ALIASES or any(k.rsplit(".", 1)[-1] == leaf for k in self.override_keys)
            own = difflib.get_close_matches(name, options, n=1, cutoff=0.75)
            own = own or [o for o in options if len(o) > 4 and (name.startswith(o) or o.startswith(name))][:1]
            if own and not exact:
                takes_value = any(a.nargs != 0 for a in self._all_actions() if own[0] in a.option_strings)
                return f"did you mean {own[0]}?", takes_value and "=" not in extra
            override = flag_hint(extra, following, self.override_keys)
            if override:
                return f"settings are key=value overrides here, not --flags: write {override}", "=" not in extra
            return f"not an option of {self.prog}; options: {', '.join(options)}", False
        own = [o for o in options if o[2:].replace("-", "_") == name.replace("-", "_")]
        if own and "=" in extra:
            return f"write it as {own[0]} {shlex.quote(extra.partition('=')[2])}", False
        return f"not expected here; see {self.prog} --help", False


def interrupts_in_one_line(command: str, next_step: str) -> None:
    """Make a ctrl-C anywhere in `command` (while its imports load, while it validates or writes)
    end with one line that says what to do next, not a traceback. Called by each front door when it
    runs as the program, before its heavy imports; the exception still unwinds first, so every
    `with` block (atomic writes, claims) cleans up, and the exit status stays that of SIGINT.
    The same hook answers a third-party package that will not import (a new user's first mistake:
    `python launch/submit.py` with a Python outside the project's environment) with the command to use."""

    def hook(kind: type[BaseException], value: BaseException, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(f"\n{command}: interrupted (ctrl-C); {next_step}", file=sys.stderr)
        elif issubclass(kind, ModuleNotFoundError) and (value.name or "").split(".")[0] not in PROJECT_PACKAGES:
            invocation = command if command.startswith("python ") else f"python {command}"
            print(
                f"{command}: {value} in this Python ({sys.executable}), which lacks the project's packages; run it in "
                f"the project's environment: ./bootstrap.sh {invocation} ... (it builds .venv once), or .venv/bin/python",
                file=sys.stderr,
            )
        else:
            sys.__excepthook__(kind, value, traceback)

    sys.excepthook = hook
