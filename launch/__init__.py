"""Where and how RSP runs: Hydra configs in, SLURM / local / in-process jobs out (via submitit).

The only package that talks to a scheduler. Entry points: launch/submit.py, launch/status.py,
python -m launch.local_cluster (a real two-node SLURM cluster on one machine).
"""
