"""What a checkpoint is worth: video label propagation (DAVIS-2017, JHMDB, VIP) and its metrics.

Entry points: `python -m eval.run checkpoint=PATH task=davis preset=rsp` and
`eval.run.evaluate(EvalConfig(...))`. This package reads checkpoints and writes result records;
it never imports the trainer. Importing it is cheap (no torch): metric worker processes import
only what they use.
"""
