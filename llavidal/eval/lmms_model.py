"""LLAVIDAL as an lmms-eval model (registered by :mod:`llavidal.eval.lmms_plugin`; needs ``pip install lmms-eval``).

``--model_args`` (comma-separated ``key=value``):

``base`` (required)   our model folder, a LLaVA-Lightening base folder, or a hub id (``org/name``)
``projector``         a projector/adapter file on top of ``base``
``clip``              CLIP for raw videos (default: the base config's ``mm_vision_tower``); feature files
                      (``.pkl``/``.npy``/``.safetensors``/``.pt``) given by a task are read as they are
``feature_cache``     folder keeping the features of raw videos (``{name}.pkl``), reused next time
``max_frames``        frames sampled per raw video (default 100, as the features were defined)
``max_new_tokens``    reply budget when the task does not set one (default 256)
``template`` / ``system``  conversation template and system prompt (default: the training ones)
``loglikelihood``     ``loss`` (default: the mean negative log-probability per continuation token, what lmms-eval's
                      own models return and its multiple-choice scoring expects: it picks the smallest value) or
                      ``logprob`` (the summed log-probability, higher is better, as its API docstring describes)
``device`` / ``dtype`` / ``attn`` / ``tokenization`` / ``allow_untrained_modality``  as ``llavidal infer``
``batch_size``        sequences decoded at once by the generation engine (lmms-eval's ``--batch_size``)

Requests: ``generate_until`` runs every request through the continuous-batching engine (greedy unless the task asks
for sampling; the reply is cut at the task's ``until`` strings); ``loglikelihood`` scores each continuation as the
assistant's reply, the continuations of one question in one batch. A task's visuals are one video (a path to a raw
video or a feature file) or a list of images (taken as the frames of one video); a question without visuals is asked
text-only. Under ``accelerate launch`` / torchrun each process takes lmms-eval's share of the requests.
"""
from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

logger = logging.getLogger(__name__)

ACCEPTED = ("base", "projector", "clip", "feature_cache", "max_frames", "max_new_tokens", "template", "system",
            "loglikelihood", "device", "dtype", "attn", "tokenization", "allow_untrained_modality", "batch_size",
            "max_batch_size", "seed")


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


class Llavidal(lmms):
    """lmms-eval's model interface on :func:`llavidal.load_pretrained` and the generation engine."""

    is_simple = True

    def __init__(self, base: str | None = None, projector: str | None = None, clip: str | None = None,
                 feature_cache: str | None = None, max_frames: int = 100, max_new_tokens: int = 256,
                 template: str = "vicuna_v1_1", system: str | None = None, loglikelihood: str = "loss",
                 device: str | None = None, dtype: str = "auto", attn: str = "sdpa", tokenization: str | None = None,
                 allow_untrained_modality: bool = False, batch_size: int | str | None = 8,
                 max_batch_size: int | None = None, seed: int = 0, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f"llavidal: unknown --model_args {sorted(unknown)}; accepted: {', '.join(ACCEPTED)}")
        if not base:
            raise ValueError("llavidal: --model_args needs base=<model folder or hub id>")
        if loglikelihood not in ("logprob", "loss"):
            raise ValueError(f"llavidal: loglikelihood={loglikelihood!r}: expected logprob or loss")
        from ..model import load_pretrained

        self._rank, self._world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if self._world_size > 1:  # lmms-eval gathers results with torch.distributed: accelerate sets it up
            from accelerate import Accelerator

            accelerator = Accelerator()
            self.accelerator = accelerator  # lmms-eval waits on it between request types
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            if device is None and accelerator.device.type == "cuda":
                device = str(accelerator.device)
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{os.environ['LOCAL_RANK']}"
        self.model, self.tokenizer = load_pretrained(base, projector=projector, device=device, dtype=dtype,
                                                     attn_implementation=attn,
                                                     allow_untrained_modality=_flag(allow_untrained_modality))
        self.clip = clip or getattr(self.model.config, "mm_vision_tower", None) or "openai/clip-vit-large-patch14"
        self.feature_cache, self.max_frames = feature_cache, int(max_frames)
        self.max_new_tokens, self.template, self.system = int(max_new_tokens), template, system
        self.tokenization, self.loglikelihood_mode, self.seed = tokenization, loglikelihood, int(seed)
        self.batch_size = int(batch_size) if str(batch_size or "").isdigit() and int(batch_size) > 0 else 8
        self._featurizer = None

    # ------------------------------------------------------------------------------------------------ visuals
    def _video_features(self, visuals: Any, where: str) -> np.ndarray | str | None:
        """The video of one request: a feature file path, a feature array made from a raw video or from images,
        or None (text only)."""
        from PIL import Image

        from .tasks import FEATURE_SUFFIXES

        if visuals is None:
            return None
        items = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if not items:
            return None
        if all(isinstance(v, Image.Image) for v in items):
            size = self.featurizer.model.stats.size
            frames = np.stack([np.asarray(img.convert("RGB").resize((size, size), Image.NEAREST)) for img in items])
            return self.featurizer.features_from_frames(frames[np.linspace(0, len(frames) - 1, min(
                len(frames), self.max_frames)).round().astype(int)])
        if len(items) != 1 or not isinstance(items[0], (str, os.PathLike)):
            kinds = ", ".join(sorted({type(v).__name__ for v in items}))
            raise ValueError(f"llavidal: {where}: the task gives {len(items)} visuals ({kinds}); llavidal reads one "
                             "video (a file path) or a list of images taken as its frames")
        path = Path(items[0])
        if not path.is_file():
            raise FileNotFoundError(f"llavidal: {where}: visual {path} does not exist")
        if path.suffix.lower() in FEATURE_SUFFIXES:
            return str(path)
        if self.feature_cache:
            return self.featurizer.cached(path, self.feature_cache)
        return self.featurizer(path)

    @property
    def featurizer(self):
        if self._featurizer is None:
            from ..demo.chat import featurizer_for

            self._featurizer = featurizer_for(self.clip, self.model.config, device=str(self.model.device),
                                              max_frames=self.max_frames)
        return self._featurizer

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _options(self, gen_kwargs: dict | None = None):
        from ..inference import GenerationOptions

        kw = dict(gen_kwargs or {})
        sampling = _flag(kw.get("do_sample", False)) and float(kw.get("temperature") or 0) > 0
        return GenerationOptions(max_new_tokens=int(kw.get("max_new_tokens") or self.max_new_tokens),
                                 temperature=float(kw.get("temperature") or 0) if sampling else 0.0,
                                 top_p=float(kw.get("top_p") or 1.0) if sampling else 1.0, seed=self.seed,
                                 template=self.template, system=self.system, tokenization=self.tokenization)

    # ------------------------------------------------------------------------------------------------ requests
    def generate_until(self, requests: list[Instance]) -> list[str]:
        from dataclasses import replace

        from ..engine import get_engine
        from ..inference import Query, make_request, reply_text

        replies: list[str | None] = [None] * len(requests)
        stops: list[list[str]] = [[] for _ in requests]

        def keyed() -> Iterable[tuple[int, Any]]:
            for i, req in enumerate(requests):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                gen_kwargs = dict(gen_kwargs or {})
                until = gen_kwargs.pop("until", None) or []
                stops[i] = [until] if isinstance(until, str) else [u for u in until if u]
                video = self._video_features(doc_to_visual(self._doc(task, split, doc_id)), f"{task} doc {doc_id}")
                opts = self._options(gen_kwargs)
                opts = replace(opts, seed=zlib.crc32(f"{self.seed}:{task}:{doc_id}".encode()))
                yield i, make_request(self.model, self.tokenizer, Query(context, video=video), opts)

        engine = get_engine(self.model, self.tokenizer, max_batch_size=self.batch_size)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="llavidal generate")
        for i, result in engine.imap(keyed()):
            replies[i] = _cut(reply_text(self.tokenizer, result), stops[i])
            bar.update(1)
        bar.close()
        return [r if r is not None else "" for r in replies]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from ..inference import Query, continuation_scores

        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):  # the continuations of one question share one forward batch
            context, _, _, doc_id, task, split = req.args
            groups.setdefault((task, split, doc_id, context), []).append(i)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        opts = self._options()
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="llavidal loglikelihood")
        for (task, split, doc_id, context), members in groups.items():
            doc = self._doc(task, split, doc_id)
            doc_to_visual = requests[members[0]].args[2]
            video = self._video_features(doc_to_visual(doc), f"{task} doc {doc_id}")
            conts = []
            for i in members:
                target = requests[i].args[1]
                conts.append(target if isinstance(target, str) else str(target(doc)))
            scores = continuation_scores(self.model, self.tokenizer, Query(context, video=video), conts, opts)
            for i, s in zip(members, scores):
                value = s.logprob if self.loglikelihood_mode == "logprob" else -s.logprob / s.tokens
                out[i] = (float(value), bool(s.greedy))
            bar.update(len(members))
        bar.close()
        return [o for o in out if o is not None]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llavidal: multi-round generation tasks are not supported; use single-turn tasks")


def _cut(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of the task's stop strings."""
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


__all__ = ["ACCEPTED", "Llavidal"]
