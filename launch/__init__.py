"""Where and how RSP runs: Hydra configs in, SLURM / local / in-process jobs out (via submitit).

The only package that talks to a scheduler. Entry points: launch/submit.py, launch/status.py,
launch/results.py. The local SLURM cluster for development and tests is not part of it (localslurm/).
"""
