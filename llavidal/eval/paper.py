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


def raw_question(item: EvalItem) -> str:
    """The question exactly as the file has it (the release used it unstripped)."""
    return item.question_raw if item.question_raw is not None else item.question


class PaperProtocol:
    """The pieces of the paper protocol that depend on the release's wording."""

    name = "paper"

    def __init__(self, release: OriginalRelease):
        self.release = release

    def record(self, base_eos: int | None, max_new_tokens: int = MAX_NEW_TOKENS,
               deviations: Sequence[str] = ()) -> dict[str, Any]:
        return {"protocol": "paper", "original_repo": str(self.release.root), "original_commit": self.release.commit,
                "deviations": list(deviations),
                "seed": SEED, "temperature": TEMPERATURE, "top_k": TOP_K, "max_new_tokens": max_new_tokens,
                "eos_token_id": base_eos, "tokenization": "original", "template": "llavidal_v1",
                "modalities": ["video"], "known_limits": list(KNOWN_LIMITS)}

    # -- the model's questions -------------------------------------------------------------------------------------
    def question(self, item: EvalItem) -> str:
        """The text the release asked the model for ``item`` (the video span follows after a newline)."""
        question = raw_question(item)
        if item.kind == "description":
            return question  # the file's question as is (TSU: the release's question, see tsu_questions)
        choices = format_choices(item.options)
        if item.format == "combined":
            return self.release.mcq_question.render(question=question, choices_str=choices)
        if item.task == "lemma-tc":
            question = question + self.release.lemma_legacy_suffix
        return self.release.legacy_question(item.task).render(question=question, choices_str=choices)

    def parser_question(self, item: EvalItem) -> str:
        """The question the release gave its MCQ parser (legacy LEMMA-TC: with the suffix)."""
        if item.task == "lemma-tc" and item.format != "combined":
            return raw_question(item) + self.release.lemma_legacy_suffix
        return raw_question(item)

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
        return [{"role": "system", "content": system},
                {"role": "user", "content": user.render(mega_caption=mega_caption)}]


def base_eos_token_id(base: str | Path) -> int | None:
    """The eos id the release's generation stopped at: the base folder's ``generation_config.json`` (else its
    ``config.json``) — 1 (``<s>``) in the LLaVA-Lightening folder, not the tokenizer's ``</s>``."""
    from ..model.hub import resolve_model_path

    base = resolve_model_path(base)  # a hub id: its cached snapshot
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


# ----------------------------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------------------------


class PaperRun:
    """One benchmark under the paper protocol: generation item by item (:meth:`run_items`), then the release's
    MCQ parsing or description judging (:meth:`score`). ``cfg`` is the run's :class:`~llavidal.eval.runner.RunConfig`.
    """

    def __init__(self, cfg, release: OriginalRelease, items: Sequence[EvalItem]):
        self.cfg, self.protocol = cfg, PaperProtocol(release)
        formats = {it.task: it.format for it in items}
        release.check(formats)  # every piece this task needs, before minutes of model loading
        if cfg.mcq_mode != "generate":
            raise ValueError("--protocol paper generates a reply per item and parses it with an LLM, as the release "
                             f"did; --mcq-mode {cfg.mcq_mode} is not part of it")
        self.eos = base_eos_token_id(cfg.base)
        self.legacy = any(it.format == "legacy" for it in items if it.kind == "mcq")
        self.seed, self.temperature = SEED, TEMPERATURE
        self.max_new_tokens = cfg.max_new_tokens or MAX_NEW_TOKENS
        self.deviations = ([f"max_new_tokens {self.max_new_tokens} instead of {MAX_NEW_TOKENS}"]
                           if self.max_new_tokens != MAX_NEW_TOKENS else [])
        ignored = sorted(cfg.modality_dirs)
        if ignored:
            logger.warning("--protocol paper feeds only video, as the release did: %s features are ignored",
                           " and ".join(ignored))
            cfg.modality_dirs = {}

    @staticmethod
    def dtype(device: str | None) -> str:
        """fp16 on GPUs, as the release ran; fp32 on CPU."""
        import torch

        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return "fp16" if cuda else "fp32"

    @staticmethod
    def shard(items: Sequence[EvalItem], rank: int, world: int) -> list[EvalItem]:
        return shard(items, rank, world)

    def seed_process(self) -> None:
        """Seed 127 once per process, as the release did; the random stream then runs through the items."""
        import random

        import numpy as np
        import torch

        random.seed(SEED)
        np.random.seed(SEED)
        torch.manual_seed(SEED)

    # -- generation ---------------------------------------------------------------------------------------------
    def options(self):
        from ..inference import GenerationOptions

        return GenerationOptions(max_new_tokens=self.max_new_tokens, template="llavidal_v1",
                                 system=self.protocol.release.system_prompt, tokenization="original")

    def generate(self, model, tokenizer, question: str, video: Path) -> str:
        """One reply as the release sampled it: ``model.generate`` with the process's global torch generator."""
        import torch

        from ..inference import Query, prepare_inputs

        batch = prepare_inputs(model, tokenizer, [Query(question, video=video)], self.options())
        with torch.inference_mode():
            new = model.generate(**batch, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0,
                                 max_new_tokens=self.max_new_tokens, eos_token_id=self.eos if self.eos is not None
                                 else tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, use_cache=True)
        return clean_reply(tokenizer.decode(new[0], skip_special_tokens=True))

    def run_items(self, model, tokenizer, items: Sequence[EvalItem], out_file: Path) -> None:
        """Replies to every item not yet in ``out_file``, one at a time in file order (the random stream runs
        through the items as in the release), one line per item."""
        from tqdm import tqdm

        from ..io_utils import append_jsonl, read_jsonl
        from .runner import item_features

        done = {r["id"] for r in read_jsonl(out_file)}
        bar = tqdm(total=len(items), initial=len(done), desc=f"{self.cfg.task} (paper protocol)", unit="item")
        for it in items:
            if it.id in done:
                continue
            base = {"id": it.id, "index": it.index, "video": it.video}
            if it.task == "tsu-desc":
                row = self._tsu_row(model, tokenizer, it, base)
            else:
                feats = item_features(self.cfg, it)
                if feats is None:
                    row = {**base, "status": "missing_video"}
                elif it.kind == "mcq":
                    q = self.protocol.question(it)
                    row = {**base, "status": "ok", "question": q,
                           "reply": self.generate(model, tokenizer, q, feats["video"])}
                else:
                    row = {**base, "status": "ok"}
                    for key, q in (("reply", raw_question(it)), ("cons_reply1", it.extra["cons_Q1"]),
                                   ("cons_reply2", it.extra["cons_Q2"])):
                        row[key] = self.generate(model, tokenizer, q, feats["video"])
            append_jsonl(out_file, [row])
            bar.update(1)
        bar.close()

    def _tsu_row(self, model, tokenizer, it: EvalItem, base: dict) -> dict:
        """The release's two passes over the clips (directory order): the question on each clip, then the two
        paraphrases on each clip."""
        from .runner import item_features

        clips = [c for c in glob_clips(self.cfg.video_dir, it.video)] if self.cfg.video_dir else []
        feats = [item_features(self.cfg, it, video=c.name) for c in clips]
        if not clips or all(f is None for f in feats):
            return {**base, "status": "missing_video", "clips": [c.name for c in clips]}
        usable = [(c, f["video"]) for c, f in zip(clips, feats) if f is not None]  # the release skipped the others
        q, c1, c2 = self.protocol.tsu_questions()
        row = {**base, "status": "ok", "clips": [c.name for c, _ in usable],
               "clips_skipped": [c.name for c, f in zip(clips, feats) if f is None]}
        row["clip_replies"] = [self.generate(model, tokenizer, q, v) for _, v in usable]
        row["cons_clip_replies1"], row["cons_clip_replies2"] = [], []
        for _, v in usable:
            row["cons_clip_replies1"].append(self.generate(model, tokenizer, c1, v))
            row["cons_clip_replies2"].append(self.generate(model, tokenizer, c2, v))
        return row

    # -- scoring ------------------------------------------------------------------------------------------------
    def _client(self, config: LLMConfig, out: Path):
        from ..llm import LLMClient

        return LLMClient(config, cache=self.cfg.judge_cache or out / "judge_cache.sqlite")

    def score(self, items: Sequence[EvalItem], problems: Sequence, rows: list[dict], out: Path) -> dict:
        """MCQ: the release's LLM parsing and accuracy; descriptions: the release's judging. Returns the summary
        fields (``score``, the details, the judge and summariser records)."""
        if self.cfg.judge is None:
            raise ValueError("--protocol paper maps replies to letters and scores descriptions with an LLM, as the "
                             "release did (llama3.1 through Ollama): start one, or give --judge-model / "
                             "--judge-base-url (any OpenAI-compatible server)")
        n_records = len(items) + len(problems)
        with self._client(self.cfg.judge, out) as judge:
            if items[0].kind == "mcq":
                result = self._score_mcq(judge, items, rows, n_records)
            else:
                result = self._score_descriptions(judge, items, rows, n_records, out)
            result["judge"] = judge.describe()
            result["judge_stats"] = judge.stats.to_dict()
        return result

    def _score_mcq(self, judge, items: Sequence[EvalItem], rows: list[dict], n_records: int) -> dict:
        by_id = {it.id: it for it in items}
        ok = [r for r in rows if r.get("status") == "ok"]
        calls = [{"messages": self.protocol.parse_messages(by_id[r["id"]], r["reply"]),
                  "parse": lambda t: "" if t is None else str(t), "max_tokens": 256,
                  "cache_ns": {"protocol": "paper", "call": "mcq-parse"}} for r in ok]
        results = judge.call_many(calls, self.cfg.judge_concurrency, desc="mcq parse (paper)")
        failed = 0
        for r, res in zip(ok, results):
            r["parser_reply"] = res.value if res.ok else None
            r["letter"] = self.protocol.letter(res.value if res.ok else "")
            r["method"] = "paper-llm" if res.ok else "paper-llm-failed"
            failed += not res.ok
        acc = accuracy(rows, items, n_records, legacy=self.legacy)
        return {"score": 100 * acc["accuracy"], "paper_mcq": {**acc, "parser_failures": failed}}

    def _judge_all(self, judge, jobs: list[tuple[str, str, dict]]) -> list[float]:
        """``(item id, criterion, fields)`` -> scores; a call that never parses scores 0 (counted)."""
        calls = [{"messages": self.protocol.judge_messages(c, **fields), "parse": release_score, "max_tokens": 256,
                  "cache_ns": {"protocol": "paper", "call": f"judge-{c}"}} for _, c, fields in jobs]
        results = judge.call_many(calls, self.cfg.judge_concurrency, desc="judge (paper)")
        self._zeroed = sum(not r.ok for r in results)
        return [r.value if r.ok else 0.0 for r in results]

    def _summaries(self, out: Path, rows: list[dict]) -> None:
        """TSU: each video's three clip-reply lists, joined by spaces, summarised by the summariser."""
        from ..llm import LLMClient

        config = self.cfg.summarizer or SummarizerConfig()
        keys = ("clip_replies", "cons_clip_replies1", "cons_clip_replies2")
        ok = [r for r in rows if r.get("status") == "ok"]
        with LLMClient(config, cache=self.cfg.judge_cache or out / "judge_cache.sqlite") as client:
            calls = [{"messages": self.protocol.summary_messages(" ".join(r[k])),
                      "parse": lambda t: "" if t is None else str(t), "max_tokens": config.max_tokens,
                      "cache_ns": {"protocol": "paper", "call": "tsu-summary"}} for r in ok for k in keys]
            results = iter(client.call_many(calls, self.cfg.judge_concurrency, desc="summaries (paper)"))
            self._summary_failures = 0
            for r in ok:
                for k in keys:
                    res = next(results)
                    r[k.replace("clip_replies", "summary")] = res.value if res.ok else ""
                    self._summary_failures += not res.ok
            self._summarizer = client.describe()

    def _score_descriptions(self, judge, items: Sequence[EvalItem], rows: list[dict], n_records: int,
                            out: Path) -> dict:
        by_id = {it.id: it for it in items}
        tsu = items[0].task == "tsu-desc"
        if tsu:
            self._summaries(out, rows)
            q, c1, c2 = self.protocol.tsu_questions()
        jobs: list[tuple[str, str, dict]] = []
        for r in rows:
            if r.get("status") != "ok":
                continue
            it = by_id[r["id"]]
            if tsu:
                question, pred, p1, p2, cq1, cq2 = q, r["summary"], r["cons_summary1"], r["cons_summary2"], c1, c2
            else:
                question, pred, p1, p2 = raw_question(it), r["reply"], r["cons_reply1"], r["cons_reply2"]
                cq1, cq2 = it.extra["cons_Q1"], it.extra["cons_Q2"]
            for c in ("correctness", "detail", "context", "temporal"):
                jobs.append((it.id, c, {"question": question, "answer": it.answer, "lvlm_pred": pred}))
            jobs.append((it.id, "consistency", {"question1": cq1, "question2": cq2,
                                                "answer": it.answer if tsu else it.extra["cons_A"],
                                                "lvlm_pred1": p1, "lvlm_pred2": p2}))
        scores = self._judge_all(judge, jobs)
        totals: dict[str, float] = {}
        per_item: dict[str, dict[str, float]] = {}
        for (item_id, c, _), s in zip(jobs, scores):
            totals[c] = totals.get(c, 0.0) + s
            per_item.setdefault(item_id, {})[c] = s
        for r in rows:
            if r["id"] in per_item:
                r["paper_scores"] = per_item[r["id"]]
        criteria = ("correctness", "detail", "context", "temporal", "consistency")
        # every record of the file is in the denominator: a missing video (or an unreadable record) scores 0
        means = {c: 20.0 * totals.get(c, 0.0) / n_records for c in criteria}
        final = sum(means.values()) / len(criteria)
        result = {"score": final, "paper_descriptions": {
            "criteria": means, "final": final, "denominator": n_records,
            "missing_video": sum(1 for r in rows if r.get("status") == "missing_video"),
            "judge_calls_scored_zero": self._zeroed}}
        if tsu:
            result["paper_descriptions"]["summary_failures"] = self._summary_failures
            result["summarizer"] = self._summarizer
        return result
