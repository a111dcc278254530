"""``--protocol paper``: what produced the paper's numbers, reproduced on request (docs/design.md#benchmarks).

Our own protocol stays the default. This one follows the release's evaluation as it runs, including what we would
otherwise fix, and records every known limit in the summary instead of changing it:

* **model**: only video is fed (object and pose folders are ignored); fp16 on GPUs; features of the raw video;
* **prompt**: the ``llavidal_v1`` system prompt, the release's question construction per benchmark and file format
  (current combined files and each legacy file), the question, a newline, the video span; the original's
  tokenization of span boundaries;
* **decoding**: sampling at temperature 0.1 with top-k 50 (the release's libraries' default), up to 1024 new tokens,
  seed 127 set once per process, items one at a time in file order (each rank takes a contiguous block), stop only
  at the base folder's configured eos id (1 in the LLaVA-Lightening folder, which is ``<s>``: replies run to the
  limit), then the release's clean-up, which strips the *characters* ``<``, ``/``, ``s``, ``>`` from the reply's end;
* **MCQ answers**: an LLM (the release used llama3.1 through Ollama, at the server's default temperature, unseeded)
  gets the release's parsing prompt; the letter is taken from its reply by the release's rule (:func:`release_letter`:
  the first capital A-E anywhere, so F is only returned for a bare letter reply); accuracy counts a missing video
  as wrong in current files and leaves it out of the denominator in legacy files;
* **descriptions**: the release's five Video-ChatGPT judge prompts, the score read as a Python literal, a judge call
  that never parses scored 0 (the release tried 10 times); a missing video scores 0 on every criterion;
* **TSU-Description**: the release's question and paraphrases, clips in directory (glob) order, replies joined by a
  space and summarised by a separately configured summariser (the release: gpt-3.5-turbo-0125, temperature 0.7,
  500 tokens).

The wording comes from the user's checkout of the release (:class:`~llavidal.eval.original.OriginalRelease`).
"""
from __future__ import annotations

import ast
import glob
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..llm import LLMConfig
from .original import OriginalRelease
from .tasks import EvalItem, format_choices

logger = logging.getLogger(__name__)

__all__ = ["PaperProtocol", "SummarizerConfig", "PaperJudgeConfig", "release_letter"]

SEED = 127
TEMPERATURE = 0.1
TOP_K = 50  # the release passed none: its transformers' default
MAX_NEW_TOKENS = 1024
STRIPPED_CHARS = "</s>"  # the release's str.rstrip argument: a set of characters, not a suffix
PARSER_CHOICES = ("A", "B", "C", "D", "E", "F", "Z")  # the letters the release's extraction knew
JUDGE_TRIES = 10  # the release asked each judge question up to 10 times, then scored 0

KNOWN_LIMITS = [
    "replies run to the token limit unless the eos id of the base folder's generation config (1 = <s> in the "
    "LLaVA-Lightening folder) is sampled; the release never stopped at </s>",
    "the reply's end is stripped of the characters '<', '/', 's', '>' (e.g. 'glass' -> 'gla')",
    "the letter is the first capital A-E anywhere in the parser's reply; F (LEMMA-TC) only from a bare-letter reply",
    "the MCQ parser and the judge run at the server's default temperature, unseeded",
    "a judge question that never parses scores 0",
    "only video is fed to the model",
    "TSU clips are read in directory order, not clip order",
]


@dataclass(frozen=True)
class PaperJudgeConfig(LLMConfig):
    """The release's MCQ parser and judge: llama3.1 through a local Ollama server, at the server's default
    temperature, unseeded, each question asked up to 10 times."""

    model: str | None = "llama3.1"
    temperature: float | None = None
    seed: int | None = None
    max_parse_failures: int = JUDGE_TRIES
    role: str = field(default="judge", compare=False)
    env: str = field(default="LLAVIDAL_JUDGE", compare=False)
    flag_prefix: str = field(default="--judge-", compare=False)

    def resolved_base_url(self) -> str:
        if self.base_url is None and not _has_env(self.env):
            import os

            host = os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
            return (host if host.startswith("http") else "http://" + host).rstrip("/") + "/v1"
        return super().resolved_base_url()


def _has_env(prefix: str) -> bool:
    import os

    return bool(os.environ.get(f"{prefix}_BASE_URL") or os.environ.get("OPENAI_BASE_URL"))


@dataclass(frozen=True)
class SummarizerConfig(LLMConfig):
    """The TSU clip-description summariser of the release: gpt-3.5-turbo-0125 (OpenAI), temperature 0.7, 500
    tokens, unseeded; ``--summarizer-*`` flags and ``$LLAVIDAL_SUMMARIZER_*`` variables choose another."""

    model: str | None = "gpt-3.5-turbo-0125"
    temperature: float | None = 0.7
    seed: int | None = None
    max_tokens: int = 500
    role: str = field(default="summarizer", compare=False)
    env: str = field(default="LLAVIDAL_SUMMARIZER", compare=False)
    flag_prefix: str = field(default="--summarizer-", compare=False)


def release_letter(reply: str | None, prefixes: Sequence[str]) -> str:
    """The option letter the release's extraction takes from an MCQ-parser reply ('' for none), reimplemented from
    its observed behaviour: remove each of ``prefixes`` (the release's list) from the stripped reply; more than ten
    words and no capital A-E gives ''; else the first capital A-E anywhere; else the first of (A) ... (F), (Z) whose
    lower-cased text contains the whole lower-cased remainder (so an empty remainder gives A), else ''."""
    s = (reply if isinstance(reply, str) else "").strip()
    for prefix in prefixes:
        s = s.replace(prefix, "")
    found = re.search(r"[ABCDE]", s)
    if found is not None:
        return found.group(0)
    if len(s.split()) > 10:
        return ""
    for letter in PARSER_CHOICES:
        if s.lower() in f"({letter})".lower():
            return letter
    return ""


def release_score(reply: str | None) -> float:
    """A judge reply as the release read it: a Python literal dict, its ``score`` (a number); else ValueError."""
    try:
        value = ast.literal_eval(str(reply).strip())["score"]
    except Exception as e:  # noqa: BLE001 - any failure is a reply that does not parse, as in the release
        raise ValueError(f"not a Python dict with a 'score' ({type(e).__name__})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"score {value!r} is not a number")
    return float(value)


def clean_reply(text: str) -> str:
    """The release's reply clean-up (a character-set strip at the end; see :data:`STRIPPED_CHARS`)."""
    return text.strip().rstrip(STRIPPED_CHARS).strip()


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """The release's data split: contiguous blocks, the last rank to the end."""
    n = len(items)
    return list(items[rank * n // world: (rank + 1) * n // world])


def glob_clips(video_dir: str | Path, video_name: str) -> list[Path]:
    """TSU clips as the release found them: ``{name}_*.mp4`` in directory order (not sorted)."""
    return [Path(p) for p in glob.glob(str(Path(video_dir) / f"{glob.escape(video_name)}_*.mp4"))]


class PaperProtocol:
    """The pieces of the paper protocol that depend on the release's wording."""

    name = "paper"

    def __init__(self, release: OriginalRelease):
        self.release = release

    def record(self, base_eos: int | None) -> dict[str, Any]:
        return {"protocol": "paper", "original_repo": str(self.release.root), "original_commit": self.release.commit,
                "seed": SEED, "temperature": TEMPERATURE, "top_k": TOP_K, "max_new_tokens": MAX_NEW_TOKENS,
                "eos_token_id": base_eos, "tokenization": "original", "template": "llavidal_v1",
                "modalities": ["video"], "known_limits": list(KNOWN_LIMITS)}

    # -- the model's questions -------------------------------------------------------------------------------------
    def question(self, item: EvalItem) -> str:
        """The text the release asked the model for ``item`` (the video span follows after a newline)."""
        if item.kind == "description":
            return item.question  # the file's question as is (TSU: the release's question, see tsu_questions)
        choices = format_choices(item.options)
        if item.format == "combined":
            return self.release.mcq_question.render(question=item.question, choices_str=choices)
        question = item.question
        if item.task == "lemma-tc":
            question = question + self.release.lemma_legacy_suffix
        return self.release.legacy_question(item.task).render(question=question, choices_str=choices)

    def parser_question(self, item: EvalItem) -> str:
        """The question the release gave its MCQ parser (legacy LEMMA-TC: with the suffix)."""
        if item.task == "lemma-tc" and item.format != "combined":
            return item.question + self.release.lemma_legacy_suffix
        return item.question

    def tsu_questions(self) -> tuple[str, str, str]:
        return self.release.tsu_questions

    # -- LLM requests ---------------------------------------------------------------------------------------------
    def parse_messages(self, item: EvalItem, reply: str) -> list[dict[str, str]]:
        prompt = self.release.mcq_parse_prompt.render(question=self.parser_question(item),
                                                      options=format_choices(item.options), prediction=reply)
        return [{"role": "user", "content": prompt}]

    def letter(self, parser_reply: str | None) -> str:
        return release_letter(parser_reply, self.release.answer_prefixes)

    def judge_messages(self, criterion: str, **fields: str) -> list[dict[str, str]]:
        system, user = self.release.judge_prompt(criterion)
        return [{"role": "system", "content": system}, {"role": "user", "content": user.render(**fields)}]

    def summary_messages(self, mega_caption: str) -> list[dict[str, str]]:
        system, user = self.release.tsu_summary_prompt
        return [{"role": "system", "content": system}, {"role": "user", "content": user.render(mega_caption=mega_caption)}]


def base_eos_token_id(base: str | Path) -> int | None:
    """The eos id the release's generation stopped at: the base folder's ``generation_config.json`` (else its
    ``config.json``) — 1 (``<s>``) in the LLaVA-Lightening folder, not the tokenizer's ``</s>``."""
    for name in ("generation_config.json", "config.json"):
        path = Path(base) / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
    return None


def accuracy(rows: Sequence[Mapping[str, Any]], items: Sequence[EvalItem], n_records: int, legacy: bool) -> dict:
    """The release's MCQ accuracy: correct / every record (current files: a missing video is wrong) or correct /
    records whose video was found (legacy files skip missing videos)."""
    truth = {it.id: it.answer for it in items}
    ok = [r for r in rows if r.get("status") == "ok"]
    correct = sum(1 for r in ok if r.get("letter") and r["letter"] == truth.get(r["id"]))
    missing = sum(1 for r in rows if r.get("status") == "missing_video")
    denominator = n_records - missing if legacy else n_records
    return {"correct": correct, "denominator": denominator, "missing_video": missing,
            "missing_video_rule": "left out (legacy)" if legacy else "counted wrong (current)",
            "accuracy": correct / denominator if denominator else 0.0,
            "letters": {k: sum(1 for r in ok if r.get("letter") == k) for k in (*PARSER_CHOICES, "")}}
