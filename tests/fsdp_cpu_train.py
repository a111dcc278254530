"""``torchrun ... tests/fsdp_cpu_train.py <training flags>``: llavidal training with FSDP on CPU processes (gloo).

accelerate turns FSDP on only for accelerator devices and silently runs plain data parallelism on CPUs; this launcher
lets the FSDP plugin through on CPU (the one line below), so that the trainer's FSDP paths (sharded parameters,
full state dicts gathered on save, sharded checkpoints and their resume) run in CI on 2 CPU processes."""
from __future__ import annotations

import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from llavidal.train import end_distributed
    from llavidal.train.train import train

    train(sys.argv[1:])
    end_distributed()
