"""What an evaluation task is: the contract each task module fills in (eval/davis.py, eval/vip.py,
eval/jhmdb.py) and eval/registry.py registers.

A task owns everything about itself: how its dataset is laid out and read, how a checkpoint is run
on it, which metrics it reports (which of them the tables headline, and which one picks a run's best
checkpoint), its default preset and frame size, the settings of its own that enter the protocol, the
checks of its dataset (run before anything is evaluated, and at submit time), a small generated set
in its official layout (tests and smoke runs), and its step of `python -m eval.prepare`. eval.run,
submit-time validation, scheduling, aggregation and preparation read the registry, so adding a task
is one module plus one line in eval/registry.py.

Task modules stay cheap to import (no torch): the status table and the aggregator read the registry
and never run a network. A task's run function imports the propagation code when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.config import PRESETS, EvalConfig, PropagationParams

if TYPE_CHECKING:  # annotations only: importing torch here would make listing the tasks slow
    import torch

GENERATED_MARKER = ".generated"  # in the root of a generated set: written last, so a set without it is incomplete
# The generated sets' design (eval/synthetic.py); change it with them, so that a set written by an
# older design is refused instead of silently reused (its numbers would not compare).
GENERATOR = "camouflage-1"


def dataset_problems(names: Callable[[], Sequence[str]], problems_of: Callable[[str], list[str]]) -> list[str]:
    """Every problem of a dataset at once (a task's check_data): its listing (`names`), then each
    listed item's (`problems_of`); a FileNotFoundError or ValueError becomes its message instead of
    ending the survey."""
    try:
        listed = names()
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    out = []
    for name in listed:
        try:
            out += problems_of(name)
        except (FileNotFoundError, ValueError) as exc:
            out.append(str(exc))
    return out


def result_column(task: str, metric: str) -> str:
    """The results-table column of a task's metric: "davis:J&F-Mean"."""
    return f"{task}:{metric}"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation as eval.run hands it to a task's run function."""

    cfg: EvalConfig  # as configured: data_root, split, sequences, batch_frames, the task's own fields
    params: PropagationParams  # the preset with cfg's overrides applied (eval.protocol.propagation_params)
    frame_size: int  # px: cfg.frame_size, or the task's default
    encoder: torch.nn.Module  # the checkpoint's frozen ViT encoder, on `device` (eval.backbone)
    device: torch.device
    out_dir: Path  # predictions go here; eval.run writes metrics.json beside them


@dataclass(frozen=True)
class EvalTask:
    """Everything about one evaluation task. Metric values are fractions (tables show percent) and
    higher is better."""

    name: str  # the value of EvalConfig.task and of evaluation.tasks entries; result columns are "<name>:<metric>"
    title: str  # one line for listings and help texts
    metrics: tuple[str, ...]  # every metric `run` returns, in its order
    headline: tuple[str, ...]  # the metrics tables, summaries and plots show, in that order
    best_by: str  # the headline metric that picks a run's best checkpoint
    default_preset: str  # what preset=auto means for this task
    default_frame_size: int  # px, when frame_size is null (which side it sets is the task's own rule)
    run: Callable[[Evaluation], dict[str, float]]  # evaluate; write predictions under out_dir; return the metrics
    protocol_fields: Callable[[EvalConfig], dict[str, Any]]  # the task's own settings that change its numbers
    # Every problem of the dataset `cfg` reads, each naming the file, the value, the rule and the fix, so that nothing
    # is silently skipped or miscounted. check_data(cfg, full): full=True reads every file (before an evaluation
    # starts), False only the layout and the first frames (submit-time validation of a training run).
    check_data: Callable[[EvalConfig, bool], list[str]]
    write_generated: Callable[..., Path]  # write_generated(root, **sizes): a generated set in the official layout
    smoke_sizes: dict[str, int]  # write_generated's sizes for smoke runs: seconds to write and to evaluate
    add_prepare_arguments: Callable[[argparse.ArgumentParser], None]  # the flags of `eval.prepare <name>`
    prepare: Callable[[argparse.Namespace], list]  # download/convert into args.root; the videos read back
    presets: tuple[str, ...] = field(default=tuple(PRESETS))  # the presets this task accepts
    generator: str = GENERATOR  # the design of its generated set, in the set's marker

    def column(self, metric: str) -> str:
        return result_column(self.name, metric)

    def problems(self) -> list[str]:
        """What is inconsistent in this definition (checked when it is registered)."""
        out = []
        if not self.name.isidentifier():
            out.append(f"task name {self.name!r} must be an identifier (it prefixes result columns and keys)")
        if not self.metrics:
            out.append(f"task {self.name}: metrics is empty; list every metric run() returns")
        extra = [m for m in (*self.headline, self.best_by) if m not in self.metrics]
        if extra:
            out.append(f"task {self.name}: headline/best_by name {', '.join(extra)}, not in metrics ({', '.join(self.metrics)})")
        if self.best_by not in self.headline:
            out.append(f"task {self.name}: best_by ({self.best_by}) must be one of its headline metrics")
        unknown = [p for p in self.presets if p not in PRESETS]
        if unknown:
            out.append(f"task {self.name}: presets {', '.join(unknown)} are not in eval.config.PRESETS ({', '.join(PRESETS)})")
        if self.default_preset not in self.presets:
            out.append(f"task {self.name}: default_preset ({self.default_preset}) must be one of its presets")
        if self.default_frame_size < 16:
            out.append(f"task {self.name}: default_frame_size ({self.default_frame_size}) must be >= 16 px")
        return out

    def generated_description(self) -> str:
        """What the marker of this task's generated set says: the design and the sizes."""
        return f"generated {self.name} set ({self.generator}) {self.smoke_sizes}"

    def generated_problem(self, root: str | Path) -> str | None:
        """Why the generated set at `root` cannot be reused (another design or other sizes), else None."""
        marker = Path(root) / GENERATED_MARKER
        if not marker.is_file() or (found := marker.read_text().strip()) == self.generated_description():
            return None
        return (
            f"{root} holds an older or different generated set ({found!r}, not {self.generated_description()!r}); "
            f"delete {root} to regenerate it, or point evaluation.data_roots.{self.name} at another directory"
        )

    def ensure_generated(self, root: str | Path) -> bool:
        """Write the smoke-size generated set at `root` unless a complete one is there; True when
        written. A set made by another design or with other sizes raises (generated_problem)."""
        root = Path(root)
        if problem := self.generated_problem(root):
            raise ValueError(problem)
        if (root / GENERATED_MARKER).is_file():
            return False
        self.write_generated(root, **self.smoke_sizes)
        (root / GENERATED_MARKER).write_text(self.generated_description() + "\n")
        return True
