"""Training: arguments of the published recipe, the Trainer, MMPro."""
from __future__ import annotations

import sys


def end_distributed() -> None:
    """Leave the process group, if this process joined one (torchrun), before the interpreter exits. Left to
    interpreter shutdown, gloo's threads can abort a rank whose work is done ("terminate called without an active
    exception", SIGABRT), and torchrun then reports the whole run as failed. Entry points call it once, last; not
    :func:`~llavidal.train.train.train`, which ``mmpro`` calls once per stage in one process. Cheap when torch was
    never imported (it is not imported here)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["end_distributed"]
