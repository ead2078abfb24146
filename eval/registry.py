"""The registered evaluation tasks: the one place that eval.run, submit-time validation, scheduling,
aggregation and preparation read (`TASKS`, `get_task`).

Adding a task is one module that defines an `eval.task.EvalTask` (see eval/davis.py) plus one line
below. Registration order is the order of the results table's metric columns and of the choice of
a run's best checkpoint (the first registered task whose best_by metric a run has): the paper's
order, DAVIS, VIP, JHMDB.
"""

from __future__ import annotations

from eval import davis, jhmdb, photo_davis, vip
from eval.task import EvalTask

TASKS: dict[str, EvalTask] = {}


def registered() -> str:
    """The registered task names, for messages: "davis, vip, jhmdb, photo_davis"."""
    return ", ".join(TASKS)


def register(task: EvalTask) -> EvalTask:
    """Add `task` to the registry; a name registered before or an inconsistent definition raises."""
    if task.name in TASKS:
        raise ValueError(
            f"evaluation task {task.name!r} is registered twice; registered: {registered()}; give the new task another name"
        )
    problems = task.problems()
    if problems:
        raise ValueError(f"evaluation task {task.name!r} cannot be registered: " + "; ".join(problems))
    TASKS[task.name] = task
    return task


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        raise ValueError(f"{name!r} is not a registered evaluation task; registered: {registered()}")
    return TASKS[name]


register(davis.TASK)
register(vip.TASK)
register(jhmdb.TASK)
register(photo_davis.TASK)
