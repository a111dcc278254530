"""Model cards for exported folders, and pushing a folder to the Hugging Face Hub.

:func:`write_model_card` writes ``README.md`` into a model folder: YAML front matter (license, base_model,
pipeline_tag, datasets, tags, language, and a ``model-index`` of the evaluation results) built with
:class:`huggingface_hub.ModelCardData`, then what the model is, how to use it (``llavidal infer`` and
``load_pretrained`` with the folder or its hub id), and an evaluation table read from ``eval run`` output folders
(score, items, judge, protocol per task). :func:`push_folder` uploads the folder with
:meth:`huggingface_hub.HfApi.upload_folder`; the token comes from ``HF_TOKEN`` or the user's ``hf auth login``
and is never written anywhere.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PIPELINE_TAG = "video-text-to-text"
DEFAULT_TAGS = ("llavidal", "video-llm", "activities-of-daily-living", "llava", "multimodal")


@dataclass
class CardConfig:
    """What the card says besides the folder itself."""

    repo_id: str | None = None  # where the folder is (or will be) on the Hub: used in the usage snippet
    license: str = "other"  # the published weights derive from LLaMA-1 (its own licence): set yours
    base_model: str | None = None  # the hub id of the base model (a local path is never written)
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: list(DEFAULT_TAGS))
    language: str = "en"
    results: list[str] = field(default_factory=list)  # eval run output folders for the evaluation table
    model_name: str | None = None


def eval_rows(results: Sequence[str | os.PathLike]) -> list[dict]:
    """One row per eval run found under ``results``: task, title, metric, value, items, judge and protocol."""
    if not results:
        return []
    from ..eval.report import find_runs
    from ..eval.tasks import TASKS

    rows = []
    for run in find_runs(results).evals:
        s = run.summary
        if s.get("score") is None:
            continue
        info = TASKS.get(run.task)
        judge = s.get("judge") if isinstance(s.get("judge"), dict) else None
        metric = ("accuracy" if run.kind in ("mcq", "openqa") and not s.get("score_kind") else
                  s.get("score_kind") or "Video-ChatGPT judge score (0-100)")
        rows.append({"task": run.task, "title": info.title if info else run.task, "metric": metric,
                     "value": float(s["score"]), "items": s.get("items_in_file"),
                     "judge": judge.get("model") if judge else None, "protocol": s.get("protocol", "clean"),
                     "run": run.column})
    return rows


def _eval_table(rows: list[dict]) -> str:
    if not rows:
        return "No evaluation results were attached to this card.\n"
    lines = ["| benchmark | metric | score | items | judge | protocol |", "| --- | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['title']} (`{r['task']}`) | {r['metric']} | {r['value']:.2f} | {r['items'] or ''} | "
                     f"{r['judge'] or '-'} | {r['protocol']} |")
    return "\n".join(lines) + ("\n\nDescription and open-QA scores depend on the judge model: compare runs made with "
                               "the same judge.\n")


def _body(name: str, cfg: CardConfig, modalities: Sequence[str], rows: list[dict]) -> str:
    where = cfg.repo_id or "path/to/this/folder"
    mods = ", ".join(modalities) if modalities else "video"
    return f"""# {name}

A LLAVIDAL model: a LLaMA chat model that reads pre-computed video (CLIP ViT-L/14 spatio-temporal features,
`[356, 1024]`), human-pose (`[256, 216]`) and object (`[n, 8, 512]`) features through one linear projector per
modality, for questions about Activities of Daily Living. Trained modalities: {mods}.

This folder is in the `llavidal` format (config with `model_type: llavidal`, safetensors weights, tokenizer) and is
read with the `llavidal` package (the LLAVIDAL reference implementation; `pip install -e .` in its checkout).

## Usage

```bash
llavidal infer --base {where} --video features/001_video_001.pkl -q "What is the person doing?"
llavidal infer --base {where} --video clip.mp4 -q "Describe the activities in order."   # raw video: CLIP features
```

```python
from llavidal import load_pretrained
from llavidal.inference import answer

model, tokenizer = load_pretrained("{where}")
print(answer(model, tokenizer, "What is the person doing?", video="features/001_video_001.pkl"))
```

## Evaluation

{_eval_table(rows)}"""


def write_model_card(folder: str | os.PathLike, cfg: CardConfig, modalities: Sequence[str] = ()) -> Path:
    """``README.md`` in ``folder`` (written atomically); returns its path."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..io_utils import atomic_write_text

    folder = Path(folder)
    name = cfg.model_name or (cfg.repo_id.split("/")[-1] if cfg.repo_id else folder.name)
    rows = eval_rows(cfg.results)
    results = [EvalResult(task_type=PIPELINE_TAG, dataset_type=r["task"], dataset_name=r["title"],
                          metric_type=r["metric"], metric_value=round(r["value"], 4)) for r in rows]
    data = ModelCardData(license=cfg.license, base_model=cfg.base_model, pipeline_tag=PIPELINE_TAG,
                         datasets=list(cfg.datasets) or None, tags=list(cfg.tags), language=cfg.language,
                         library_name="llavidal", model_name=name if results else None,
                         eval_results=results or None)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(name, cfg, modalities, rows)}")
    return atomic_write_text(folder / "README.md", str(card))


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
                commit_message: str = "Upload LLAVIDAL model") -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except (HfHubHTTPError, OSError) as e:  # offline mode, no network, no token, no rights
        raise ValueError(f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); the folder {folder} is complete and can be "
                         f"uploaded later with `hf upload {repo_id} {folder}`") from None
    return str(getattr(info, "commit_url", info))


__all__ = ["DEFAULT_TAGS", "PIPELINE_TAG", "CardConfig", "eval_rows", "push_folder", "write_model_card"]
