"""Skeleton files → pose feature files ``[tokens, 216]``: ``llavidal extract-pose``.

One output per video, named ``{stem}{suffix}.{pkl|npy}`` with ``suffix`` = ``_pose`` by default:
``S001C001P001R001A001.skeleton.npy`` → ``S001C001P001R001A001_pose.pkl``; with ``--stitch-map`` (the ADL-X
temporal stitching, ``{video_name: [clip, ...]}``) the clips' skeletons are joined in list order and the output is
``{video_name}_pose.pkl`` (e.g. ``001_video_001_pose.pkl``). The training JSON's ``"pose"`` field names these files;
``--suffix _pose --format pkl`` matches the ``..._pose.pkl`` of docs/design.md#training-data (the ADL-X download uses
``.pickle``: the loader reads both).

Every sequence (one clip, or the joined clips of a stitched video) is resampled to ``tokens × stride`` frames (1024
for 256 tokens, 300 for 75; linear interpolation aligned at both ends, see
:func:`~llavidal.pose.modeling.resample_frames`) and encoded to exactly ``tokens`` rows of 216 float32 values.
1024 frames are about 34 s at 30 fps, the length of a stitched ADL-X video of 3-4 clips; a single 300-frame NTU clip
is stretched 3.4x at 256 tokens (the encoder is trained at ``pose train --frames``, 300 by default), so single clips
are closest to training with ``--tokens 75``.

Outputs are written atomically and skipped when they exist (a rerun resumes); every video that cannot be made —
unreadable file, no tracked body, a clip of the stitch map that is not found — is recorded in ``failures.jsonl``
with the reason, and ``extract_summary.json`` counts it all. Without a trained model (``--model``) the command
refuses: features of a random encoder look like real ones and must never be written by accident;
``--random-init`` exists for plumbing tests and is recorded in the summary.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..features import check_feature_file, save_feature
from ..io_utils import append_jsonl, atomic_write_json, remove_stale_temporaries
from .configuration import WEIGHTS_NAME, PoseEncoderConfig
from .data import concat_clips, find_skeleton_files, load_clip_array
from .modeling import PoseEncoder, PoseModelError, SkeletonCLIP, load_pose_model, resample_frames

log = logging.getLogger("llavidal.pose")

FORMATS = {"pkl": ".pkl", "npy": ".npy"}


@dataclass
class PoseExtractConfig:
    model: str | None = None  # a `llavidal pose train` output folder (or one of its checkpoint-N folders)
    tokens: int = 256
    fmt: str = "pkl"
    suffix: str = "_pose"
    batch: int = 16
    workers: int | None = None
    device: str | None = None
    stitch_map: str | None = None
    random_init: bool = False  # plumbing tests only: a seeded random encoder
    seed: int = 0
    progress: bool = True


def refuse_without_model() -> PoseModelError:
    return PoseModelError(
        "extract-pose needs a trained pose encoder: pass --model DIR (the output folder of `llavidal pose train`, "
        "holding config.json + model.safetensors). Refusing to write features from a random encoder; "
        "--random-init does that explicitly, for plumbing tests only")


def load_encoder(cfg: PoseExtractConfig, device: torch.device) -> tuple[PoseEncoder, dict]:
    """The encoder to extract with, and what to record about it."""
    if cfg.model is None:
        if not cfg.random_init:
            raise refuse_without_model()
        torch.manual_seed(cfg.seed)
        model = SkeletonCLIP(PoseEncoderConfig(tokens=cfg.tokens)).to(device).eval()
        return model.encoder, {"model": None, "random_init": True, "seed": cfg.seed}
    if cfg.random_init:
        raise PoseModelError("give either --model or --random-init, not both")
    model = load_pose_model(cfg.model, device)
    digest = hashlib.sha256((Path(cfg.model) / WEIGHTS_NAME).read_bytes()).hexdigest()
    return model.encoder, {"model": str(cfg.model), "model_sha256": digest, "random_init": False}


def read_stitch_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{video_name: [clip, ...]}`` (clips by NTU name: stem, ``..._rgb.avi``, ``....skeleton.npy``, ...)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the stitch map: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the stitch map is a {type(data).__name__}, expected an object "
                         "{video_name: [clip file, ...]}")
    for k, v in data.items():
        if not isinstance(v, list) or not v or not all(isinstance(c, str) for c in v):
            raise ValueError(f"{path}: entry {k!r} is {v!r}, expected a non-empty list of clip file names")
    return data


def plan_jobs(skeletons: str | os.PathLike, stitch_map: str | None) -> tuple[list[tuple[str, list[Path]]], list[dict],
                                                                              list[dict]]:
    """(jobs ``(output stem, skeleton files)``, failures known before reading, duplicates not used)."""
    from ..curation.ntu import NTUName

    files, duplicates = find_skeleton_files(skeletons)
    if stitch_map is None:
        return [(stem, [path]) for stem, path in sorted(files.items())], [], duplicates
    jobs, failures = [], []
    for video, clips in read_stitch_map(stitch_map).items():
        paths, missing = [], []
        for clip in clips:
            try:
                stem = NTUName.parse(Path(clip).name).stem
            except ValueError:
                stem = Path(clip).name.split(".")[0].removesuffix("_rgb")
            (paths.append(files[stem]) if stem in files else missing.append(clip))
        if missing:
            failures.append({"video": video, "stage": "plan",
                             "error": f"clips without a skeleton file under {skeletons}: {missing}"})
        else:
            jobs.append((video, paths))
    return jobs, failures, duplicates


class _Sequences(torch.utils.data.Dataset):
    """One video per item: its clips read, joined and resampled; failures are returned as values."""

    def __init__(self, jobs, frames: int, max_bodies: int):
        self.jobs, self.frames, self.max_bodies = jobs, frames, max_bodies

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        try:
            x = concat_clips([load_clip_array(p, self.max_bodies) for p in self.jobs[i][1]])
            return {"index": i, "x": torch.from_numpy(resample_frames(x, self.frames)), "error": None}
        except (OSError, ValueError) as e:
            return {"index": i, "x": None, "error": f"{type(e).__name__}: {e}"}


def _collate(batch):
    return batch


def extract_pose(skeletons: str | os.PathLike, output: str | os.PathLike, cfg: PoseExtractConfig) -> dict:
    """Extract pose features for every skeleton file (or stitched video) into ``output``; returns the summary."""
    from tqdm import tqdm

    if cfg.fmt not in FORMATS:
        raise ValueError(f"--format must be one of {sorted(FORMATS)}, got {cfg.fmt!r}")
    if cfg.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {cfg.tokens}")
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder, about = load_encoder(cfg, device)  # refuses before anything is written
    if about["random_init"]:
        print("extract-pose: WARNING: --random-init: writing features of an UNTRAINED encoder (plumbing tests only)",
              file=sys.stderr)
    mcfg = encoder.config
    frames = cfg.tokens * mcfg.stride
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)  # half-written files of a run that was killed
    ext = FORMATS[cfg.fmt]
    t_start = time.perf_counter()

    jobs, failures, duplicates = plan_jobs(skeletons, cfg.stitch_map)
    def done(name: str) -> bool:  # an existing output counts only when it loads with the right shape
        path = output / f"{name}{cfg.suffix}{ext}"
        why = check_feature_file(path, width=mcfg.width, rows=cfg.tokens) if path.is_file() else "absent"
        if why not in (None, "absent"):
            print(f"extract-pose: unusable earlier output, redone: {why}", file=sys.stderr)
        return why is None

    todo = [j for j in jobs if not done(j[0])]
    done_before = len(jobs) - len(todo)
    failures_file = output / "failures.jsonl"
    failures_file.unlink(missing_ok=True)  # the failures of THIS run (outputs of earlier runs stay)
    append_jsonl(failures_file, failures)

    workers = cfg.workers if cfg.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))
    workers = min(workers, len(todo))
    loader = torch.utils.data.DataLoader(_Sequences(todo, frames, mcfg.max_bodies), batch_size=cfg.batch,
                                         num_workers=workers, collate_fn=_collate,
                                         prefetch_factor=2 if workers else None)
    written, new_failures, model_s = 0, 0, 0.0
    with tqdm(total=len(todo), unit="video", disable=not cfg.progress, desc="extract-pose") as bar:
        for batch in loader:
            bad = [b for b in batch if b["x"] is None]
            append_jsonl(failures_file, [{"video": todo[b["index"]][0], "stage": "read",
                                          "files": [str(p) for p in todo[b["index"]][1]], "error": b["error"]}
                                         for b in bad])
            new_failures += len(bad)
            good = [b for b in batch if b["x"] is not None]
            if good:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    feats = encoder(torch.stack([b["x"] for b in good]).to(device)).float().cpu().numpy()
                model_s += time.perf_counter() - t0
                for b, f in zip(good, feats):  # f: [tokens, width]
                    save_feature(np.ascontiguousarray(f), output / f"{todo[b['index']][0]}{cfg.suffix}{ext}")
                    written += 1
            bar.update(len(batch))

    wall = time.perf_counter() - t_start
    summary = {
        "skeletons": str(skeletons), "output": str(output), **about, "tokens": cfg.tokens, "frames": frames,
        "width": mcfg.width, "format": cfg.fmt, "naming": f"{{stem}}{cfg.suffix}{ext}", "device": str(device),
        "videos_found": len(jobs) + len(failures), "already_done": done_before, "written": written,
        "failed": len(failures) + new_failures, "duplicates_not_used": duplicates, "model_s": round(model_s, 3),
        "wall_s": round(wall, 3), "config": asdict(cfg),
    }
    atomic_write_json(output / "extract_summary.json", summary)
    msg = f"{written} written, {done_before} already there, {summary['failed']} failed"
    if summary["failed"]:
        msg += f" (listed in {failures_file})"
    print(f"extract-pose: {msg}")
    return summary
