"""python -m localslurm install|start|stop|status (localslurm/cluster.py)."""

from localslurm.cluster import main

raise SystemExit(main())
