"""The reference's entry point, so its README command works as written with torchrun:

    torchrun --nproc_per_node=N main_pretrain_rsp.py --batch_size ... --model rsp_vit_small_patch16 ...

Everything is in rsp/paper_cli.py (flag mapping) and rsp/train.py (the one training loop).
"""

from rsp.paper_cli import run_as_program

if __name__ == "__main__":
    raise SystemExit(run_as_program())
