"""The reference's entry point, so its README command works as written with torchrun:

    torchrun --nproc_per_node=N main_pretrain_rsp.py --batch_size ... --model rsp_vit_small_patch16 ...

Everything is in rsp/paper_cli.py (flag mapping) and rsp/train.py (the one training loop).
"""

if __name__ == "__main__":  # before the heavy imports: a ctrl-C, or a Python without torch, is one line
    from core.commandline import interrupts_in_one_line

    interrupts_in_one_line("main_pretrain_rsp.py", "run it again: it resumes from the output directory's checkpoints")

from rsp.paper_cli import run_as_program  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run_as_program())
