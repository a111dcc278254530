"""Scoring of the description benchmarks (Video-ChatGPT protocol, docs/design.md#benchmarks).

* Charades-Description: five judge calls per item (correctness, detail, context, temporal on the reply to the
  question; consistency on the replies to the two paraphrases against ``cons_A``); score = mean x 20 per criterion,
  final = mean of the five. Judge failures are excluded from the means and counted beside them.
* TSU-Description: the per-clip descriptions (numeric clip order) are summarised by the judge LLM into one
  description per video (and likewise the replies to the two consistency questions), which is then judged the
  same way against the reference.
* Offline metrics beside the judge (ROUGE-L; embedding cosine when the bundled model is installed), so a run
  without any LLM still gives numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

from .metrics import aggregate_scores, text_metrics
from .prompts import CRITERIA
from .tasks import TASKS, EvalItem


def description_questions(item: EvalItem) -> dict[str, str]:
    """What a description item asks the model, keyed by the field its reply is stored under: the question
    (``reply``) when a criterion other than consistency is judged, the two paraphrases (``cons_reply1/2``) when
    consistency is."""
    criteria = TASKS[item.task].criteria
    out = {}
    if any(c != "consistency" for c in criteria):
        out["reply"] = item.prompt
    if "consistency" in criteria:
        out["cons_reply1"] = item.extra.get("cons_Q1") or item.question
        out["cons_reply2"] = item.extra.get("cons_Q2") or item.question
    return out


def _summaries(judge, prompts, rows: list[dict], key: str, concurrency: int) -> dict[str, str | None]:
    reqs = [prompts.summary_request(r[key], id=f"{r['id']}/{key}") for r in rows if r.get(key)]
    results = judge.judge_many(reqs, concurrency=concurrency, desc=f"summaries ({key})") if reqs else []
    return {res.id.rsplit("/", 1)[0]: (res.value if res.ok else None) for res in results}


def score_descriptions(items: Sequence[EvalItem], rows: list[dict], judge=None, prompts=None,
                       concurrency: int = 16, embedding: bool | None = None,
                       criteria: Sequence[str] = CRITERIA) -> dict:
    """Judge and offline scores of description replies; ``judge`` None gives the offline metrics only.
    ``criteria``: the criteria judged (the task's; ``final`` is their mean). ``per_item`` maps item ids to their
    judge outcomes per criterion (score, the judge's reply, or the error)."""
    by_id = {it.id: it for it in items}
    ok = [r for r in rows if r.get("status") == "ok" and r["id"] in by_id]
    out: dict = {"items_scored": len(ok), "criteria": list(criteria)}
    if not ok:
        return out

    tsu = any("clip_replies" in r for r in ok)
    # a consistency-only task has no reply to the main question: its first paraphrase reply stands in offline
    predictions = {r["id"]: r.get("reply") or r.get("cons_reply1") for r in ok}
    cons = {r["id"]: (r.get("cons_reply1"), r.get("cons_reply2")) for r in ok}
    if tsu and judge is not None:
        summary = _summaries(judge, prompts, ok, "clip_replies", concurrency)
        c1 = _summaries(judge, prompts, ok, "cons_clip_replies1", concurrency)
        c2 = _summaries(judge, prompts, ok, "cons_clip_replies2", concurrency)
        predictions = summary
        cons = {i: (c1.get(i), c2.get(i)) for i in summary}
        out["summary_failures"] = sum(v is None for v in summary.values())
    elif tsu:  # no LLM: the clip descriptions joined in order stand for the video's description
        predictions = {r["id"]: " ".join(r["clip_replies"]) for r in ok}

    scored = [i for i, p in predictions.items() if p]
    refs = [by_id[i].answer or "" for i in scored]
    out["offline"] = {k: v for k, v in text_metrics([predictions[i] for i in scored], refs,
                                                    embedding=embedding).items() if not k.startswith("per_item")}

    if judge is None:
        out["judge"] = None
        return out
    requests, owners = [], []
    for i in scored:
        it = by_id[i]
        c_q1 = it.extra.get("cons_Q1") or it.question
        c_q2 = it.extra.get("cons_Q2") or it.question
        c_a = it.extra.get("cons_A") or it.answer or ""
        p1, p2 = cons.get(i, (None, None))
        reqs = prompts.description_requests(i, it.question, it.answer or "", predictions[i], c_q1, c_q2, c_a,
                                            p1 or "", p2 or "")
        for criterion, req in reqs.items():
            if criterion not in criteria:
                continue
            if criterion == "consistency" and not (p1 and p2):
                continue  # no paraphrase replies: consistency not judged (counted below)
            requests.append(req)
            owners.append((i, criterion))
    results = judge.judge_many(requests, concurrency=concurrency, desc="judge")
    per: dict[str, list] = {c: [] for c in criteria}
    per_item: dict[str, dict] = {}
    for (i, criterion), res in zip(owners, results):
        per[criterion].append(res)
        per_item.setdefault(i, {})[criterion] = ({"score": res.value, "reply": res.reply} if res.ok
                                                 else {"score": None, "error": res.error, "reply": res.reply})
    scores = aggregate_scores(per, criteria=list(criteria), judge=judge.config.identity(),
                              prompt_set=f"{prompts.name}@{prompts.version}")
    out["judge"] = scores.to_dict()
    out["per_item"] = per_item
    if "consistency" in criteria:
        out["consistency_not_judged"] = sum(1 for i in scored if not all(cons.get(i, (None, None))))
    return out


__all__ = ["description_questions", "score_descriptions"]
