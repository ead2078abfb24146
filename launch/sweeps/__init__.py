"""Sweeps: a sweep file read and checked (file), expanded into runs (expand), and successive halving
on them (selection: the `select:` block and the ranking; rungs: one decision per rung, prune markers,
unprune; promotion: asynchronous promotion, a pure replayable rule). The plan that submits a sweep's
runs is launch/plan.py, above this package."""
