"""A real two-node SLURM cluster on one machine, for development and the scheduler tests only: the
launcher never imports it, and jobs do not carry it in their code snapshot. `python -m localslurm
install|start|stop|status`; the shell scripts in localslurm/scripts/ are the single source of truth
(docs/local-slurm.md)."""
