"""Evaluation jobs for every milestone checkpoint; each (run, step, task, protocol) at most once.

How they are scheduled (docs/evaluation.md#evaluation-jobs-and-results explains the choice): the training job itself, on rank 0,
submits them when a milestone checkpoint is durable, to the same backend (SLURM: one job per task;
local: one job per checkpoint running its tasks in turn, so a laptop is not oversubscribed; debug:
in-process). No watcher process has to stay alive, and a dependency on a job that has not written
its checkpoint yet is never needed.

    expected.py   which evaluations a run should have, and where each one lives
    claims.py     at most once: the claim, submission and failure markers of one evaluation
    job.py        the job that evaluates one checkpoint on its tasks and writes their records
    schedule.py   submitting the evaluations that are due (from the training job, or a backfill)
    recovery.py   finding lost evaluations (one scheduler query) and resubmitting them
    __main__.py   python -m launch.evaluations schedule|backfill

Every scheduling, recovery and rung decision goes through launch/advance.py, the one owner of state
transitions (the milestone hook, the evaluation job, follow, backfill, status and the SLURM watcher
job call it).

- At most once: `<run>/evals/step_XXXXXXXX/<task>-<hash12>/submitted.json` is created with O_EXCL
  before submitting; a second scheduler (a requeued job, a backfill) sees it and skips.
- Requeue-safe: every attempt of the training job reconciles at start, so a milestone committed
  just before a kill still gets its evaluations.
- Backfill: `python -m launch.evaluations backfill [OUTPUT_ROOT] [--all-checkpoints] [--retry-failed]`.
- Retention: the checkpoint is pinned until its evaluations wrote a record or failed.
"""
