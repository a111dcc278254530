"""What the benchmark scripts share: running from a checkout, model shapes, dtypes, machine info, JSON output.

Every script in ``bench/`` starts with ``import _common`` (the folder of the script is on ``sys.path`` when it is
run as ``python bench/<name>.py``), which puts the repository root on ``sys.path`` so that a checkout runs without
``pip install -e .``.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"  # the loopback OpenAI stub lives there
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: decoder shapes: the tiny test model, a CPU-sized model whose step is dominated by the decoder as at 7B, and
#: LLaMA-7B (LLaVA-7B-Lightening + the 9 modality tokens)
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, vocab_size=1012),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  vocab_size=8012),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               vocab_size=32012),
}

#: text lengths of an ADL-X training sample (LLaMA tokenizer, the training chat template)
SYSTEM_TOKENS = 38  # "A chat between a curious user ... questions." + " USER:"
QUESTION_TOKENS = 24  # a typical ADL-X question
ANSWER_TOKENS = 48  # " ASSISTANT:" + a typical answer + "</s>"

#: peak dense bf16 TFLOP/s of the GPUs we report MFU on (first match of the device name wins)
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0))


def dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine_info(device: Any = None, **extra: Any) -> dict[str, Any]:
    """Platform, Python, CPUs and load; torch / transformers versions and threads when importable; the GPU name
    on CUDA. ``extra``: more fields (library versions a benchmark depends on)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "loadavg": [round(x, 2) for x in os.getloadavg()]}
    if "torch" in sys.modules:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=torch.get_num_threads())
        if device is not None and torch.device(device).type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    info.update(extra)
    return info


def write_json(path: str | os.PathLike, obj: Any) -> None:
    from llavidal.io_utils import atomic_write_json

    atomic_write_json(path, obj)
