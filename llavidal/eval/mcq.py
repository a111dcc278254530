"""From a model's free-form reply to an option letter, and accuracy with a fixed denominator.

The parser is deterministic (no judge LLM) and conservative: when a reply names two different answers, or nothing
it can tie to one option, it returns None, and the item counts as answered wrongly ("unparsed").

Rules, tried in this order; the first tier that yields anything decides:

1. **Letter only.** The whole reply, once spaces, quotes, brackets, ``*`` and end punctuation are stripped, is one
   option letter (any case: "C", "(c)", "C.", "**C**") or, for numbered options, one option number ("2", "2.").
2. **Answer cue.** "answer" (or "ans") followed by connecting words ("is", "would be", "to the question is",
   "option", ":", "-", ...) and then a letter token: ``Answer: C``, ``The answer is (F)``,
   ``the correct answer is option B``. All such cues in the reply must agree; if they disagree -> None.
3. **Letter markers.** Any of: a token at the very start of the reply followed by punctuation ("C) ...", "(C) ...",
   "C. ...", "C: ...", "C - ..."); a parenthesised token anywhere ("... so (C)"); a token after "option", "choice",
   "letter", "choose", "pick", "select", "go with" ("I'd choose C", "option 2"). All markers must agree, so a
   reply that echoes the choice list "(A) ... (B) ..." yields None.
4. **Option text.** Texts are compared after normalisation (case-folded, every run of non-alphanumerics, ``_``
   included, becomes one space, the articles a/an/the are dropped), so "Make_coffee.Pour_water" matches
   "make coffee, pour water". A reply equal to one option's text gives it. Otherwise each option whose text
   occurs in the reply at word boundaries is a candidate; a candidate whose every occurrence lies inside the
   occurrence of a longer candidate (e.g. "walk" inside "walk to the door") is dropped, so the most specific
   option wins. One candidate left -> its letter; several -> None.
5. **Option parts**, instead of 4 when an option is a list of action names (Charades-AR): an option all of whose
   action names occur in the reply (normalised, at word boundaries, in any order) is a candidate; a candidate whose
   names are a strict subset of another candidate's is dropped; one left -> its letter, else None. Mentioning only
   some of an option's actions names nothing.

What a letter token is, so that a letter is never read inside a word or from an article:

* a letter is only a token when no letter or digit touches it ("Drink water" has no token D, "Vitamin-C" none);
* only letters of the item's options count (an "E" in a four-option question is ignored);
* a bracketed token "(c)" / "[C]" is always a token; a bare lowercase letter only when nothing but punctuation or
  the end of the reply follows it ("answer: b." yes, "answer: a person" no);
* a bare capital "A" is English's article at least as often as a letter, so it only counts when punctuation or
  the end follows it ("A.", "A)", "answer is A") or the text after it begins with option A's text ("A walk" when
  A is "walk"); "A person pours water" is not read as A. Bare capitals B-F count when followed by a space;
* an option number (numbered options only: 1 -> A) counts like a letter, but never as part of a longer number or
  a decimal ("12", "2.5"), and at the start of the reply only when punctuation follows ("2. sit down", not
  "2 people"); with letter-only options numbers are ignored.

Self-contradiction: in tiers 2 and 3, when the words right after a letter token (up to the end of that sentence)
name a different option by its text ("3. stirring" where stirring is option D, "(A) walk" where walk is B), the
reply counts as naming both, so it comes out ambiguous (None). Text that names no option, or the token's own
option, leaves the letter standing.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_LETTERS = "ABCDEF"

_ARTICLES = {"a", "an", "the"}
# end of the reply, or punctuation that is not glued to a following letter or digit ("2:30" is not option 2)
_PUNCT_AFTER = r"""(?=\s*(?:$|[.,;:!?)\]'"*`>\-–—](?![A-Za-z0-9])))"""

_TOKEN = r"(?<![A-Za-z0-9])(?P<open>[(\[])?\s*(?P<tok>[A-Za-z]|[1-9])\s*(?(open)[)\]])(?![A-Za-z0-9]|\.\d|['’][A-Za-z])"
_GLUE_WORDS = (r"is|was|would|will|should|must|be|been|probably|likely|most|definitely|clearly|then|therefore|"
               r"thus|here|so|to|the|this|that|question|above|final|correct|best|right|option|choice|letter|number|"
               r"no")
_GLUE = rf"""(?:\s*(?:(?i:(?:{_GLUE_WORDS}))(?![A-Za-z0-9])\.?|[:=\-–—>'"“”‘’]))*\s*"""
_ANSWER_RE = re.compile(rf"(?<![A-Za-z0-9])(?i:answer|ans)(?![A-Za-z0-9]){_GLUE}{_TOKEN}")
_MARKER_CUE_RE = re.compile(
    rf"(?<![A-Za-z0-9])(?i:option|choice|letter|choose|chose|choosing|pick|picked|select|selected|go\s+with)"
    rf"(?![A-Za-z0-9]){_GLUE}{_TOKEN}")
_LEADING_RE = re.compile(rf"^\s*{_TOKEN}")
_BRACKETED_RE = re.compile(r"(?<![A-Za-z0-9])[(\[]\s*(?P<tok>[A-Za-z]|[1-9])\s*[)\]]")
_CLEANUP_RE = re.compile(r"</?s>|<unk>|\*\*|`|#+\s")


@dataclass(frozen=True)
class ParseResult:
    """``letter`` (None: unparsed), the rule that decided (``method``) and the competing letters if ambiguous."""

    letter: str | None
    method: str              # letter-only, answer-cue, marker, option-text, option-parts, ambiguous, unparsed, empty
    candidates: tuple[str, ...] = ()


def normalize_text(text: str) -> str:
    """Case-folded words, non-alphanumerics (and ``_``) as single spaces, articles dropped."""
    words = re.sub(r"[\W_]+", " ", text.casefold()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def _clean(reply: str) -> str:
    return " ".join(_CLEANUP_RE.sub(" ", reply).split())


class _Ctx:
    def __init__(self, options: Mapping[str, str] | None, letters: str | None, numbered: bool):
        if options is not None:
            self.letters = "".join(str(k).upper() for k in options)
        else:
            self.letters = (letters or DEFAULT_LETTERS).upper()
        self.options = {str(k).upper(): v for k, v in (options or {}).items()}
        self.numbered = numbered

    def token_letter(self, tok: str) -> str | None:
        if tok.isdigit():
            if not self.numbered:
                return None
            n = int(tok)
            return self.letters[n - 1] if 1 <= n <= len(self.letters) else None
        up = tok.upper()
        return up if up in self.letters else None

    def accept(self, m: re.Match, text: str) -> str | None:
        """The letter of a token match, applying the article / lowercase / number rules."""
        letter = self.token_letter(m.group("tok"))
        if letter is None:
            return None
        if m.group("open"):
            return letter
        tok, rest = m.group("tok"), text[m.end():]
        if tok.isdigit() or tok.islower() or tok == "A":
            if re.match(_PUNCT_AFTER, rest):
                return letter
            return letter if self._option_follows(letter, rest) else None
        return letter

    def stated(self, letter: str | None, text: str, end: int) -> list[str | None]:
        """``[letter]``, plus the letter of another option if the words right after the token name that option
        ("3. stirring" where stirring is D): a reply that contradicts itself then comes out ambiguous."""
        if letter is None or not self.options:
            return [letter]
        rest = re.sub(r"^[\s.,;:)\]\-–—>]+", "", text[end:])
        segment = re.split(r"(?<=[^\s.])[.!?;](?:\s|$)|\n", rest, maxsplit=1)[0]
        named = _by_text(segment, self.options) if segment else None
        if named is not None and named.letter is not None and named.letter != letter:
            return [letter, named.letter]
        return [letter]

    def _option_follows(self, letter: str, rest: str) -> bool:
        opt = self.options.get(letter)
        if not opt:
            return False
        want, got = normalize_text(opt).split(), normalize_text(rest).split()
        return bool(want) and got[:len(want)] == want


def _spans(words: list[str], needle: list[str]) -> list[tuple[int, int]]:
    n = len(needle)
    return [(i, i + n) for i in range(len(words) - n + 1) if words[i:i + n] == needle] if n else []


def _by_text(reply: str, options: Mapping[str, str]) -> ParseResult | None:
    norm_reply = normalize_text(reply)
    norms = {k: normalize_text(v) for k, v in options.items()}
    exact = [k for k, v in norms.items() if v and v == norm_reply]
    if len(exact) == 1:
        return ParseResult(exact[0], "option-text")
    words = norm_reply.split()
    spans = {k: _spans(words, v.split()) for k, v in norms.items()}
    spans = {k: s for k, s in spans.items() if s}
    if not spans:
        return None

    def covered(k: str) -> bool:
        return any(len(norms[o].split()) > len(norms[k].split())
                   and all(any(a <= s and e <= b for a, b in spans[o]) for s, e in spans[k])
                   for o in spans if o != k)

    left = sorted(k for k in spans if not covered(k))
    if len(left) == 1:
        return ParseResult(left[0], "option-text")
    return ParseResult(None, "ambiguous", tuple(left))


def _by_parts(reply: str, parts: Mapping[str, Sequence[str]]) -> ParseResult | None:
    words = normalize_text(reply).split()
    names = {str(k).upper(): {normalize_text(p) for p in v if normalize_text(p)} for k, v in parts.items()}
    full = [k for k, ps in names.items() if ps and all(_spans(words, p.split()) for p in ps)]
    if not full:
        return None
    left = sorted(k for k in full if not any(o != k and names[k] < names[o] for o in full))
    if len(left) == 1:
        return ParseResult(left[0], "option-parts")
    return ParseResult(None, "ambiguous", tuple(left))


def _decide(found: Iterable[str | None], method: str) -> ParseResult | None:
    letters = sorted({x for x in found if x is not None})
    if not letters:
        return None
    if len(letters) == 1:
        return ParseResult(letters[0], method)
    return ParseResult(None, "ambiguous", tuple(letters))


def parse_choice_detailed(reply: str | None, options: Mapping[str, str] | None = None, *, numbered: bool = False,
                          option_parts: Mapping[str, Sequence[str]] | None = None,
                          letters: str | None = None) -> ParseResult:
    """Parse a free-form reply into an option letter, with the rule that decided. See the module docstring.

    ``options`` maps letters to option texts (their keys are the valid letters); without it ``letters`` (default
    A-F) gives the valid letters and only letter rules apply. ``numbered``: the benchmark numbered its options
    (1 -> A), so option numbers are read as well. ``option_parts``: letter -> list of action names (Charades-AR).
    """
    if reply is None:
        return ParseResult(None, "empty")
    ctx = _Ctx(options, letters, numbered)
    text = _clean(str(reply))
    if not text:
        return ParseResult(None, "empty")

    # 1. the reply is a single letter / number
    bare = text.strip(" \t\"'`*()[]{}.,;:!?")
    if len(bare) == 1 and (bare.isalpha() or bare.isdigit()):
        letter = ctx.token_letter(bare)
        if letter is not None:
            return ParseResult(letter, "letter-only")

    # 2. answer cues
    found: list[str | None] = []
    for m in _ANSWER_RE.finditer(text):
        found += ctx.stated(ctx.accept(m, text), text, m.end())
    result = _decide(found, "answer-cue")
    if result is not None:
        return result

    # 3. letter markers
    found = []
    lead = _LEADING_RE.match(text)
    if lead is not None:
        tok = lead.group("tok")
        rest = text[lead.end():]
        if lead.group("open") or re.match(r"\s*(?:[.)\]]|[-–—:](?=\s|$))", rest):
            letter = ctx.token_letter(tok)
        elif tok.isupper() and tok != "A" and rest[:1].isspace():
            letter = ctx.token_letter(tok)
        else:
            letter = ctx.accept(lead, text)
        found += ctx.stated(letter, text, lead.end())
    for m in _BRACKETED_RE.finditer(text):
        found += ctx.stated(ctx.token_letter(m.group("tok")), text, m.end())
    for m in _MARKER_CUE_RE.finditer(text):
        found += ctx.stated(ctx.accept(m, text), text, m.end())
    result = _decide(found, "marker")
    if result is not None:
        return result

    # 4. option text, or 5. option parts where options are lists of action names
    if option_parts:
        result = _by_parts(text, option_parts)
    elif ctx.options:
        result = _by_text(text, ctx.options)
    else:
        result = None
    return result if result is not None else ParseResult(None, "unparsed")


def parse_choice(reply: str | None, options: Mapping[str, str] | None = None, *, numbered: bool = False,
                 option_parts: Mapping[str, Sequence[str]] | None = None, letters: str | None = None) -> str | None:
    """The option letter a reply names, or None (unparsed: counted as wrong). See :func:`parse_choice_detailed`."""
    return parse_choice_detailed(reply, options, numbered=numbered, option_parts=option_parts, letters=letters).letter


def parse_item_reply(item: Any, reply: str | None) -> ParseResult:
    """Parse a reply to an :class:`~llavidal.eval.tasks.EvalItem` (uses its options, numbering, option parts)."""
    if item.options is None:
        raise ValueError(f"item {item.id!r} of {item.task} is not a multiple-choice item")
    return parse_choice_detailed(reply, item.options, numbered=item.numbered,
                                 option_parts=item.extra.get("option_parts"))


# ----------------------------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------------------------
OUTCOMES = ("correct", "wrong", "unparsed", "missing_video", "not_run")


def grade(answer: str | None, letter: str | None) -> str:
    """``correct``, ``wrong`` or ``unparsed`` (``letter`` None)."""
    if letter is None:
        return "unparsed"
    return "correct" if answer is not None and letter.upper() == answer.upper() else "wrong"


@dataclass
class McqScore:
    """Counts over every record of a benchmark file; ``accuracy = correct / total``.

    ``total`` is fixed by the file: readable items + ``unreadable`` records. Items whose video is missing, items
    never run, unparsed replies and unreadable records are all in the denominator and all count as wrong.
    """

    task: str | None
    total: int
    correct: int = 0
    wrong: int = 0
    unparsed: int = 0
    missing_video: int = 0
    not_run: int = 0
    unreadable: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def answered(self) -> int:
        """Items with a parsed reply (correct + wrong)."""
        return self.correct + self.wrong

    @property
    def accuracy_answered(self) -> float:
        """correct / answered: a diagnostic only, never the reported score."""
        return self.correct / self.answered if self.answered else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(accuracy=self.accuracy, accuracy_answered=self.accuracy_answered)
        return d

    def __str__(self) -> str:
        name = f"{self.task}: " if self.task else ""
        return (f"{name}accuracy {100 * self.accuracy:.2f}% ({self.correct}/{self.total}); wrong {self.wrong}, "
                f"unparsed {self.unparsed}, missing video {self.missing_video}, not run {self.not_run}, "
                f"unreadable records {self.unreadable}")


def score_mcq(items: Sequence[Any], predictions: Mapping[str, str | None], *, missing_videos: Iterable[str] = (),
              unreadable: int | Sequence[Any] = 0, task: str | None = None) -> McqScore:
    """Accuracy over a whole benchmark file.

    ``items``: every readable item of the file (objects with ``id`` and ``answer``). ``predictions``: item id ->
    parsed letter (None for an unparsed reply). ``missing_videos``: ids of items whose video was not found.
    ``unreadable``: the loader's problem list (or its length). An item that is neither predicted nor missing
    counts as ``not_run``. Predictions for ids that are not items raise ValueError (wrong file pairing).
    """
    ids = {it.id for it in items}
    unknown = [k for k in predictions if k not in ids]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions for ids that are not in the benchmark, e.g. {unknown[:5]}")
    missing = set(missing_videos)
    n_bad = unreadable if isinstance(unreadable, int) else len(unreadable)
    score = McqScore(task if task is not None else (items[0].task if items else None), len(items) + n_bad,
                     unreadable=n_bad)
    for it in items:
        if it.id in missing:
            score.missing_video += 1
        elif it.id not in predictions:
            score.not_run += 1
        else:
            outcome = grade(it.answer, predictions[it.id])
            setattr(score, outcome, getattr(score, outcome) + 1)
    return score
