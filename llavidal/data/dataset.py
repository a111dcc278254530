"""The ADL-X training data (docs/design.md#training-data): records, a lazy dataset over the feature folders, a collator.

A modality is active iff its folder is given; a record without the modality's key simply lacks it. Missing or
unreadable feature files follow a policy (``error`` by default, ``skip`` or ``zeros``), and over-long samples are
dropped, never cut inside a span; every such event is counted and reported (see :class:`DataIssueLog`).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import IGNORE_INDEX, MODALITIES
from ..features import FeatureError, FeatureKindError, load_feature, validate_feature
from ..io_utils import stays_inside
from ..prompting import encode_turns, expand_turns, model_template, strip_reserved_tokens
from ..representation import span_rows, two_token_spec
from .store import FeatureStore, open_feature_source

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "skip", "zeros")
_ROLE_HUMAN = {"human", "user"}
_ROLE_GPT = {"gpt", "assistant", "bot"}


class DataError(ValueError):
    """Bad training data; the message names the file, the record and what was expected."""


# ==================================================================== records
def read_records(path: str | os.PathLike) -> list[dict]:
    """Read a training JSON in either released format and return records in the current one.

    Current: ``[{"id", "video", "object", "pose", "conversations": [{"from", "value"}, ...]}]``.
    Older: ``[{"video_id", "q", "a"}]`` (video only; feature file ``{video_id}.pkl``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: training JSON not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records, got {type(data).__name__}")
    return [normalise_record(r, i, path) for i, r in enumerate(data)]


def normalise_record(rec, index: int, path: Path | str = "<records>") -> dict:
    where = f"{path}: record {index}"
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object, got {type(rec).__name__}")
    if "conversations" in rec:
        conv = rec["conversations"]
        if not isinstance(conv, list) or not conv or len(conv) % 2:
            raise DataError(f"{where} (id {rec.get('id')!r}): 'conversations' must be a non-empty list of "
                            "alternating human/gpt turns")
        turns = []
        for j in range(0, len(conv), 2):
            h, g = conv[j], conv[j + 1]
            if not (isinstance(h, dict) and isinstance(g, dict)):
                raise DataError(f"{where}: conversations[{j}] and [{j + 1}] must be objects with 'from' and 'value'")
            if h.get("from") not in _ROLE_HUMAN or g.get("from") not in _ROLE_GPT:
                raise DataError(f"{where}: conversations[{j}:{j + 2}] has roles {h.get('from')!r}, {g.get('from')!r}; "
                                "expected 'human' then 'gpt'")
            if not isinstance(h.get("value"), str) or not isinstance(g.get("value"), str):
                raise DataError(f"{where}: conversations[{j}:{j + 2}] values must be strings")
            turns.append((h["value"], g["value"]))
        out = {"id": str(rec.get("id", rec.get("video", index))), "turns": turns}
        for m in MODALITIES:
            if rec.get(m):
                out[m] = str(rec[m])
                if not stays_inside(out[m]):
                    raise DataError(f"{where} (id {out['id']!r}): {m} file {out[m]!r} leaves the {m} folder "
                                    "(absolute, or with a '..' part); refusing the training JSON")
        return out
    if {"video_id", "q", "a"} <= set(rec):
        vid = str(rec["video_id"])
        if not stays_inside(vid):
            raise DataError(f"{where}: video_id {vid!r} leaves the video folder (absolute, or with a '..' part)")
        return {"id": vid, "video": f"{vid}.pkl", "turns": [(f"{rec['q']}\n<video>", str(rec["a"]))]}
    raise DataError(f"{where}: neither the current format (with 'conversations') nor the older "
                    f"{{video_id, q, a}} format; keys: {sorted(rec)}")


# ==================================================================== issue log
@dataclass
class DataIssueLog:
    """Counts every missing/unreadable/zeroed/dropped sample; optionally appends each event to a JSONL file so
    that counts from DataLoader workers and other ranks are not lost."""

    path: Path | None = None
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def record(self, kind: str, index: int, record_id: str, detail: str) -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(f"{record_id}: {detail}")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"kind": kind, "index": index, "id": record_id, "detail": detail}) + "\n"
            with open(self.path, "a") as fh:  # one short append: atomic on POSIX
                fh.write(line)

    @staticmethod
    def summarise(paths: Sequence[Path]) -> dict:
        """Unique samples per kind over event files (events repeat each epoch)."""
        unique: dict[str, set] = {}
        examples: dict[str, list] = {}
        for p in paths:
            if not Path(p).is_file():
                continue
            for line in Path(p).read_text().splitlines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                unique.setdefault(ev["kind"], set()).add(ev["index"])
                ex = examples.setdefault(ev["kind"], [])
                if len(ex) < 5 and ev["detail"] not in ex:
                    ex.append(f"{ev['id']}: {ev['detail']}")
        return {k: {"samples": len(v), "examples": examples[k]} for k, v in sorted(unique.items())}


# ==================================================================== dataset
class ADLXDataset(Dataset):
    """Lazy supervised dataset: features are read and prompts tokenized when an item is requested."""

    def __init__(
        self,
        records: Sequence[dict],
        tokenizer,
        model_config,
        folders: Mapping[str, str | os.PathLike | None],
        missing: str = "error",
        mask_probs: Mapping[str, float] | None = None,
        max_length: int = 2048,
        template: str | None = None,  # None: the model's own (prompting.model_template)
        system: str | None = None,
        seed: int = 0,
        issue_log: DataIssueLog | None = None,
        tokenization: str = "clean",
    ):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing-feature policy {missing!r}; expected one of {MISSING_POLICIES}")
        self.records = list(records)
        if not self.records:
            raise DataError("the training data holds no records")
        self.tokenizer = tokenizer
        self.config = model_config
        self.sources: dict[str, FeatureStore | Path] = {
            m: open_feature_source(f, m) for m, f in folders.items() if f is not None
        }
        unknown = set(folders) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected {tuple(MODALITIES)}")
        if not self.sources:
            placeholders = tuple(m.placeholder for m in MODALITIES.values())
            with_media = sum(any(p in u for u, _ in r["turns"] for p in placeholders) for r in self.records)
            if with_media:
                logger.warning("no feature folder given (--video_folder, --object_folder, --pose_folder ...): "
                               "training on text only; the modality placeholders of %d of the %d records are removed",
                               with_media, len(self.records))
            else:
                logger.info("training on text only (no feature folder given, no modality placeholder in the data)")
        self.missing = missing
        self.mask_probs = {m: float((mask_probs or {}).get(m, 0.0)) for m in MODALITIES}
        for m, p in self.mask_probs.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"--{m}_mask_prob must be in [0, 1], got {p}")
        self.max_length = max_length
        self.template = template or model_template(model_config)
        self.system, self.tokenization = system, tokenization
        self.seed, self.epoch = seed, 0
        self.issues = issue_log or DataIssueLog()

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.sources]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for step in range(n):  # a dropped sample is replaced by the next usable one (and counted)
            sample = self.build(int(index + step) % n)
            if sample is not None:
                return sample
        raise DataError(f"none of the {n} records is usable: {dict(self.issues.counts)}")

    # ---------------------------------------------------------------- one sample
    def _feature(self, m: str, rec: dict, index: int) -> np.ndarray | None:
        name = rec.get(m)
        if not name:
            return None
        source = self.sources[m]
        where = f"{rec['id']} ({m}: {name})"
        try:
            if isinstance(source, FeatureStore):
                arr, origin = source.get(name), f"{source.root}[{name}]"
            else:
                arr, origin = load_feature(source / name, m), str(source / name)
            return validate_feature(arr, m, self.config, origin)
        except FeatureKindError as e:  # one model reads one kind (RepresentationError too): never skipped or zeroed
            raise DataError(f"record {index} {where}: {e}") from None
        except (FileNotFoundError, KeyError, FeatureError) as e:
            kind = "missing" if isinstance(e, (FileNotFoundError, KeyError)) else "unreadable"
            if self.missing == "error":
                raise DataError(f"record {index} {where}: {e} (use --missing_features skip|zeros to continue past "
                                "such files; they are counted either way)") from None
            self.issues.record(f"{kind}_{self.missing}", index, rec["id"], f"{m}: {e}")
            if self.missing == "skip":
                raise _Skip from None
            return self._zeros(m)

    def _zeros(self, m: str) -> np.ndarray:
        spec, c = MODALITIES[m], self.config
        group = spec.group_size(c)  # one object of `group` frames, or the published rows per sample
        shape = (1, group, spec.dim(c)) if group is not None else (spec.rows_per_sample(c), spec.dim(c))
        return np.zeros(shape, dtype=np.float32)

    def build(self, index: int) -> dict | None:
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        feats: dict[str, np.ndarray | None] = {}
        try:
            for m in self.modalities:
                arr = self._feature(m, rec, index)
                if arr is not None and self.mask_probs[m] > 0 and rng.random() < self.mask_probs[m]:
                    arr = np.zeros_like(arr)  # masked: tokens stay, features are zero
                feats[m] = arr
        except _Skip:
            return None
        rows = span_rows(feats, self.config)
        turns = [(strip_reserved_tokens(u)[0], strip_reserved_tokens(a)[0]) for u, a in rec["turns"]]
        try:
            turns = expand_turns(turns, rows, self.config.mm_use_vid_start_end, self.config.use_modality_string_prefix)
        except ValueError as e:
            raise DataError(f"record {index} ({rec['id']}): {e}") from None
        # two-token video: the question's positions, from which the context tokens are computed
        marks = [] if two_token_spec(self.config) is not None else None
        ids, labels = encode_turns(self.tokenizer, turns, self.template, self.system, self.tokenization, marks)
        if len(ids) > self.max_length:
            self.issues.record("too_long_dropped", index, rec["id"],
                               f"{len(ids)} tokens > model_max_length {self.max_length}")
            return None
        out = {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}
        if marks is not None:
            out["query_mask"] = torch.zeros(len(ids), dtype=torch.bool)
            out["query_mask"][marks] = True
        for m in MODALITIES:
            a = feats.get(m)
            # a feature store hands out read-only views of its memory map: copy those (writing through such a
            # tensor would be undefined behaviour); arrays read from files are used as they are
            out[m] = None if a is None else torch.from_numpy(np.require(a, requirements=("C", "W")))
        return out


class _Skip(Exception):
    pass


# ==================================================================== collator
@dataclass
class DataCollator:
    """Right-pads ids/labels and packs each modality's rows over the samples that have it (batch order), so
    per-sample presence and variable object counts need no feature padding at all."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, instances: Sequence[dict]) -> dict:
        longest = max(len(x["input_ids"]) for x in instances)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(instances)
        input_ids = torch.full((B, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, longest), dtype=torch.long)
        for i, x in enumerate(instances):
            n = len(x["input_ids"])
            input_ids[i, :n] = x["input_ids"]
            labels[i, :n] = x["labels"]
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if any("query_mask" in x for x in instances):  # two-token video: the question's positions, padded as ids
            batch["query_mask"] = torch.zeros((B, longest), dtype=torch.bool)
            for i, x in enumerate(instances):
                if "query_mask" in x:
                    batch["query_mask"][i, :len(x["query_mask"])] = x["query_mask"]
        for m in MODALITIES:
            rows = [x[m].reshape(-1, x[m].shape[-1]) for x in instances if x.get(m) is not None]
            if rows:
                batch[f"{m}_features"] = torch.cat(rows).float() if len({r.dtype for r in rows}) > 1 else torch.cat(rows)
        return batch


__all__ = ["ADLXDataset", "DataCollator", "DataError", "DataIssueLog", "MISSING_POLICIES", "normalise_record",
           "read_records"]
