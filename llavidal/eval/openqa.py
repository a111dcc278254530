"""Scoring of zero-shot open-ended video QA (MSVD-QA, MSRVTT-QA, ActivityNet-QA; docs/design.md#general-benchmarks).

With a judge, each reply is given to the judge LLM with the question and the reference answer; the judge says
whether the reply is correct (yes/no) and grades the match 0-5 (:class:`~llavidal.eval.prompts.OpenQAPromptSet`).
Reported:

* ``accuracy``: correct / items in the file (missing videos, unreadable records and judge failures are not correct,
  and each is counted beside it);
* ``accuracy_judged``: yes / (yes + no), the share among the replies the judge could grade (what the Video-ChatGPT
  scripts report);
* ``mean_score``: the mean 0-5 grade over the judged replies (failures excluded and counted).

Without a judge an offline check stands in, labelled as such: a reply is counted correct when the reference answer
(normalised: case, punctuation and articles dropped) occurs in it as whole words; no score.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .mcq import normalize_text
from .tasks import EvalItem


def answer_in_reply(answer: str, reply: str | None) -> bool:
    """The offline check: the normalised reference answer occurs in the normalised reply at word boundaries."""
    want, got = normalize_text(answer), normalize_text(reply or "")
    return bool(want) and re.search(rf"(?<!\S){re.escape(want)}(?!\S)", got) is not None


def _percent(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def score_openqa(items: Sequence[EvalItem], rows: list[dict], total: int, judge=None, prompts=None,
                 concurrency: int = 16) -> dict:
    """Accuracy and mean score of open-ended replies; ``per_item`` maps item ids to what was decided for them.
    ``total``: the records in the file (the accuracy's denominator)."""
    by_id = {it.id: it for it in items}
    answered = [r for r in rows if r.get("status") == "ok" and r["id"] in by_id]
    missing = sum(r.get("status") == "missing_video" for r in rows)
    per_item: dict[str, dict] = {}
    if judge is None:
        for r in answered:
            per_item[r["id"]] = {"match": answer_in_reply(by_id[r["id"]].answer or "", r.get("reply"))}
        failures, scores = 0, []
        method = "offline: reference answer found in the reply (no judge configured)"
    else:
        reqs = [prompts.openqa_request(by_id[r["id"]].question, by_id[r["id"]].answer or "", r.get("reply") or "",
                                       id=r["id"]) for r in answered]
        results = judge.judge_many(reqs, concurrency=concurrency, desc="judge") if reqs else []
        for res in results:
            entry = {"reply": res.reply}
            if res.ok:
                entry.update(match=bool(res.value["match"]), score=int(res.value["score"]))
            else:
                entry.update(match=None, error=res.error)
            per_item[res.id] = entry
        failures = sum(e["match"] is None for e in per_item.values())
        scores = [e["score"] for e in per_item.values() if e.get("score") is not None]
        method = "judge"
    yes = sum(e["match"] is True for e in per_item.values())
    no = sum(e["match"] is False for e in per_item.values())
    return {
        "method": method, "total": total, "answered": len(answered), "correct": yes, "incorrect": no,
        "judge_failures": failures, "missing_videos": missing,
        "unreadable_or_not_run": total - len(answered) - missing,
        "accuracy": _percent(yes, total), "accuracy_judged": _percent(yes, yes + no),
        "mean_score": sum(scores) / len(scores) if scores else None, "per_item": per_item,
    }


__all__ = ["answer_in_reply", "score_openqa"]
