"""Shared helpers of the data/training/MMPro tests: tiny synthetic ADL-X data, training flags, tensor comparisons."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

# small synthetic world: 16 training videos, 6 video rows and 5 pose rows per file, 1-3 objects per video
N_TRAIN = 16
VIDEO_ROWS = 6
POSE_ROWS = 5

_CACHE: dict[str, dict] = {}


def synthetic_data(root: Path) -> dict:
    """``llavidal.synthetic.make_dataset`` at ``root`` (written once per session and root)."""
    from llavidal.synthetic import WorldSpec, make_dataset

    key = str(root)
    if key not in _CACHE:
        paths = make_dataset(root, n_train=N_TRAIN, n_test=4, seed=0,
                             spec=WorldSpec(video_rows=VIDEO_ROWS, pose_rows=POSE_ROWS))
        _CACHE[key] = {k: str(v) for k, v in paths.items()}
    return _CACHE[key]


def train_flags(base, data: dict, out, modalities=("video", "object", "pose"), *extra: str, **kw) -> list[str]:
    """Flags of a small, fast projector-only run (callers override any of them through ``extra``/``kw``)."""
    flags = {
        "--model_name_or_path": str(base), "--data_path": data["train"], "--output_dir": str(out),
        "--tune_mm_mlp_adapter": "True", "--mm_use_vid_start_end": "True",
        "--per_device_train_batch_size": "2", "--max_steps": "2", "--learning_rate": "1e-2",
        "--save_strategy": "no", "--report_to": "none", "--use_cpu": "True", "--logging_steps": "1",
        "--disable_tqdm": "True", "--seed": "7", "--dataloader_num_workers": "0",
    }
    for m in modalities:
        flags[f"--{m}_folder"] = data[f"{m}_folder"]
    for k, v in kw.items():
        flags[f"--{k}"] = str(v)
    argv = [x for kv in flags.items() for x in kv]
    return argv + list(extra)


def adapter(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    return load_file(str(path / "adapter.safetensors" if path.is_dir() else path))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


PYTHON = sys.executable


def python_with(module: str, env_var: str) -> str | None:
    """The Python that can import ``module``: ``$env_var`` when set (a virtual environment of its own, for packages
    whose pins conflict with ours), else this one if it has the module, else None (the test is skipped)."""
    import importlib.util

    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    return sys.executable if importlib.util.find_spec(module) is not None else None
