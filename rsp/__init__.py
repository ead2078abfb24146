"""RSP: visual representation learning with stochastic frame prediction (Jang et al., ICML 2024).

The method itself: model (`rsp.model`), data (`rsp.data`), training (`rsp.train`). Nothing here
knows about SLURM, Hydra or submitit; `launch/` drives it with typed configs (`rsp.config`).
"""
