"""Finance-aware sentiment of a sentence: VADER with a finance lexicon and phrase rules on top.

The score adds three kinds of evidence on VADER's valence scale and squashes the sum into -1 .. +1 the
way VADER does:

* phrase rules with a fixed reading ("profit warning", "won a contract", "cut 300 jobs");
* moves of a subject whose direction matters ("profit rose" is good, "costs rose" is bad, "loss
  narrowed" is good), found from the direction word back to its subject or forward to its object, or
  from two amounts compared ("EUR 5.1 mn, compared to EUR 3.2 mn");
* VADER over the words no rule used, with finance valences for trade words and everyday words that
  mean nothing to an investor ("share", "interest", "credit") set to zero, and the rest of its
  lexicon weighed down.

A scorer holds only read-only tables, so one instance can serve many threads.
"""

from __future__ import annotations

import copy
import math
import re
import string
from dataclasses import dataclass
from types import MappingProxyType

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from services.sentiment import finance_lexicon as fl

MAX_CHARS = 5_000  # longer text is cut here: the work per call stays bounded
DEFAULT_NEUTRAL_BAND = 0.24  # tuned on half A; one unit of valence (score 0.25) leaves neutral
# VADER's everyday words count less than the finance words; the positive ones least, as financial
# text is full of upbeat boilerplate ("a leading provider of innovative solutions").
GENERAL_POSITIVE_WEIGHT = 0.4
GENERAL_NEGATIVE_WEIGHT = 0.8
SIDE_CLAUSE_WEIGHT = 0.5  # "profit fell, while sales rose": the side clause counts for less
BEFORE_BUT, AFTER_BUT = 0.5, 1.5  # as VADER weighs "X, but Y"
IMPLICIT_SUBJECT_WEIGHT = 0.5  # "rose 3 %" with nothing named that rose
DIRECTION_WEIGHT = 2.0
COMPARISON_WEIGHT = 1.8
NEGATION_SCALAR = -0.6
VADER_THRESHOLD = 0.05
_ALPHA = 15.0  # VADER's normalisation constant
_BACK_WINDOW = 10
_FORWARD_WINDOW = 5
_STRICT_WINDOW = 3

_TOKEN = re.compile(r"[\w$£€¥][\w$£€¥&'.,/+-]*[\w%]|[\w$£€¥%]|[;:,()]")
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(?:\.\d+)?%?$")
# typographic quotes and dashes as the rules write them; no-break space as a space
_TRANSLATE = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-", "\u00a0": " "}
)
_SPACES = re.compile(r"\s+")
_BUT = re.compile(r"\bbut\b")
_SUBORDINATE = re.compile(r"\b(?:" + "|".join(sorted(fl.SUBORDINATORS)) + r")\b")

_MOVE_PRECEDERS = fl.words(
    "was were is are be been being closed ended finished went gone go goes going moved edged inched "
    "ticked trended trending shot , remained stayed"
)
_MOVE_FOLLOWERS = fl.words(
    "from by on year-on-year sharply slightly strongly significantly markedly clearly considerably "
    "substantially year-over-year"
)
_INTO = frozenset(("in", "of", "for"))

# an amount: optional currency, a number (tolerating "19 .9" from tokenised text), an optional unit
_AMOUNT = (
    r"(?:(?P<cur{n}>eur|euro|euros|usd|us\$|\$|gbp|£|€|sek|nok|dkk|aud|a\$|nzd|jpy|¥|chf|cad|rub|cny|inr)"
    r"\s?)?(?P<num{n}>[-+]?\d[\d,]*(?:\s?\.\d+)?)(?!\d)\s?(?P<unit{n}>%|pct|percent|per cent|mn|mln|million"
    r"|m|bn|billion|b|k|thousand)?(?![\w/-])"
)
_COMPARISONS: tuple[tuple[re.Pattern[str], bool], ...] = (
    # (pattern, whether amount 1 is the earlier figure)
    (
        re.compile(
            r"\bfrom (?:an? |the )?" + _AMOUNT.format(n=1) + r"[^;]{0,40}?\bto " + _AMOUNT.format(n=2)
        ),
        True,
    ),
    (re.compile(r"\bto " + _AMOUNT.format(n=2) + r"[^;]{0,30}?\bfrom " + _AMOUNT.format(n=1)), True),
    (
        re.compile(
            _AMOUNT.format(n=1) + r"[^;()]{0,50}?\b(?:compared (?:to|with)|as against|against|versus|vs\.?|"
            r"in comparison (?:to|with)|from|year-earlier|a year earlier|last year)\b[^;\d]{0,50}?"
            + _AMOUNT.format(n=2)
        ),
        False,
    ),
    # "EUR 37.5 mn ( EUR 48.2 mn )", "$3.2 billion (2023: $3.6 billion)"
    (
        re.compile(
            _AMOUNT.format(n=1)
            + r"\s?\(\s?(?:(?:fy ?)?(?:19|20)?\d\d\s?:\s?|(?:pcp|prior year|previous year|last year)"
            r"\s?:?\s?)?" + _AMOUNT.format(n=2)
        ),
        False,
    ),
)
_UNIT_SCALE = MappingProxyType(
    {
        "k": 1e3,
        "thousand": 1e3,
        "m": 1e6,
        "mn": 1e6,
        "mln": 1e6,
        "million": 1e6,
        "b": 1e9,
        "bn": 1e9,
        "billion": 1e9,
    }
)
_PERCENT_UNITS = frozenset(("%", "pct", "percent", "per cent"))


@dataclass(frozen=True, slots=True)
class TextScore:
    score: float  # -1.0 .. +1.0, rounded to 4 places
    label: str  # "positive" | "neutral" | "negative"
    vader: float  # plain VADER compound for the same text
    matches: tuple[str, ...]  # the finance lexicon terms and phrase rules that fired


@dataclass(frozen=True, slots=True)
class _Token:
    word: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Evidence:
    weight: float  # on VADER's valence scale
    note: str
    at: int  # where in the text it starts


@dataclass(frozen=True, slots=True)
class _Subject:
    first: int  # token indexes, inclusive
    last: int
    text: str
    polarity: int
    weight: float


_SubjectEntry = tuple[tuple[str, ...], int, float]  # words, polarity, weight


def _build_subjects() -> dict[str, list[_SubjectEntry]]:
    """Subjects by their first word, longest first, so that "net loss" wins over "net"."""
    table: dict[str, list[_SubjectEntry]] = {}
    for subjects, polarity in ((fl.POSITIVE_SUBJECTS, 1), (fl.NEGATIVE_SUBJECTS, -1)):
        for phrase, weight in subjects.items():
            words = tuple(phrase.split())
            table.setdefault(words[0], []).append((words, polarity, weight))
    for entries in table.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return table


_SUBJECTS = _build_subjects()


def vader_label(compound: float) -> str:
    """The usual reading of a VADER compound: +-0.05 and beyond is positive or negative."""
    if compound >= VADER_THRESHOLD:
        return "positive"
    if compound <= -VADER_THRESHOLD:
        return "negative"
    return "neutral"


class SentimentScorer:
    """Scores financial sentences; construct once (it loads VADER's lexicon), then call from anywhere."""

    def __init__(self, neutral_band: float = DEFAULT_NEUTRAL_BAND) -> None:
        if not 0.0 <= neutral_band < 1.0:
            raise ValueError(f"neutral_band must be in [0, 1), not {neutral_band}")
        self.neutral_band = neutral_band
        self._vader = SentimentIntensityAnalyzer()
        self._finance = copy.copy(self._vader)
        lexicon = {
            word: valence * (GENERAL_POSITIVE_WEIGHT if valence > 0 else GENERAL_NEGATIVE_WEIGHT)
            for word, valence in self._vader.lexicon.items()
            if not any(char.isdigit() for char in word)  # "187", "420": slang, not amounts
        }
        for word in fl.NEUTRAL_WORDS:
            lexicon.pop(word, None)
        lexicon.update(fl.LEXICON)
        self._finance.lexicon = lexicon

    def label_for(self, score: float) -> str:
        if score >= self.neutral_band:
            return "positive"
        if score <= -self.neutral_band:
            return "negative"
        return "neutral"

    def vader(self, text: str) -> float:
        """Plain VADER compound, over the same capped text that ``score`` reads."""
        text = text[:MAX_CHARS]
        if not text.strip():
            return 0.0
        return _compound(self._vader, text)

    def score(self, text: str) -> TextScore:
        text = text[:MAX_CHARS]
        if not text.strip():
            return TextScore(0.0, "neutral", 0.0, ())
        plain = _compound(self._vader, text)

        low = _SPACES.sub(" ", text.translate(_TRANSLATE)).strip().lower()
        used = bytearray(len(low))  # 1 where a rule has used the character
        evidence: list[_Evidence] = []
        _phrase_evidence(low, used, evidence)
        for match in fl.NEUTRAL_PHRASES.finditer(low):
            start, end = match.span()
            if not any(used[start:end]):
                used[start:end] = b"\x01" * (end - start)
        tokens = [_Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(low)]
        _subject_evidence(low, tokens, used, evidence)

        compound = _compound(self._finance, _unused(low, used))
        side = _side_clauses(low)
        but = _BUT.search(low)
        pivot = but.start() if but else -1
        total = _unsquash(compound) + sum(
            item.weight
            * (SIDE_CLAUSE_WEIGHT if _inside(item.at, side) else 1.0)
            * (1.0 if pivot < 0 else BEFORE_BUT if item.at < pivot else AFTER_BUT)
            for item in evidence
        )
        score = round(total / math.sqrt(total * total + _ALPHA), 4)

        matches = [item.note for item in evidence]
        matches += _lexicon_matches(tokens, used)
        return TextScore(score, self.label_for(score), plain, tuple(dict.fromkeys(matches)))


def _compound(analyzer: SentimentIntensityAnalyzer, text: str) -> float:
    """VADER's compound score, skipping VADER when it would find nothing to score (the usual case for
    a neutral sentence): plain ASCII text (so no emoji) without a word of the analyzer's lexicon."""
    if text.isascii():
        lexicon = analyzer.lexicon
        for token in text.split():
            word = token.strip(string.punctuation)
            if (word if len(word) > 2 else token).lower() in lexicon:  # VADER's own tokenising
                break
        else:
            return 0.0
    return float(analyzer.polarity_scores(text)["compound"])


def _unused(low: str, used: bytearray) -> str:
    """The text with what the rules used blanked out, for VADER to read the rest."""
    if not any(used):
        return low
    return "".join(" " if flag else char for char, flag in zip(low, used, strict=True))


def _unsquash(compound: float) -> float:
    """VADER's summed valence behind a compound score (the inverse of its normalisation)."""
    compound = max(-0.9999, min(0.9999, compound))
    return compound * math.sqrt(_ALPHA / (1.0 - compound * compound))


def _side_clauses(low: str) -> list[tuple[int, int]]:
    """Spans of clauses opened by "while", "although", "despite"...: to the comma when the sentence
    opens with one ("While sales rose, profit fell"), otherwise to the end of the clause."""
    spans = []
    for match in _SUBORDINATE.finditer(low):
        start = match.start()
        stop = ",;" if start == 0 else ";"
        end = min((i for i in (low.find(c, start) for c in stop) if i >= 0), default=len(low))
        spans.append((start, end))
    return spans


def _inside(at: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= at < end for start, end in spans)


def _negated(tokens: list[_Token], index: int) -> bool:
    return any(tokens[j].word in fl.NEGATORS for j in range(max(0, index - 3), index))


def _phrase_evidence(low: str, used: bytearray, evidence: list[_Evidence]) -> None:
    for name, pattern, weight in fl.PHRASE_RULES:
        for match in pattern.finditer(low):
            start, end = match.span()
            if any(used[start:end]):
                continue
            used[start:end] = b"\x01" * (end - start)
            if any(word in fl.NEGATORS for word in low[max(0, start - 30) : start].split()[-3:]):
                evidence.append(_Evidence(weight * NEGATION_SCALAR, f"rule: {name} (negated)", start))
            else:
                evidence.append(_Evidence(weight, f"rule: {name}", start))


def _subjects(tokens: list[_Token], used: bytearray) -> list[_Subject]:
    found: list[_Subject] = []
    words = [token.word for token in tokens]
    i = 0
    while i < len(tokens):
        for phrase, polarity, weight in _SUBJECTS.get(words[i], ()):
            end = i + len(phrase)
            if (
                tuple(words[i:end]) == phrase
                and not any(used[token.start] for token in tokens[i:end])
                and not (
                    phrase[0] in ("shares", "stock")
                    and fl.SHARE_COUNT_WORDS.intersection(words[max(0, i - 5) : i])
                )
            ):
                found.append(_Subject(i, end - 1, " ".join(phrase), polarity, weight))
                i = end - 1
                break
        i += 1
    return found


def _is_move(tokens: list[_Token], i: int) -> bool:
    """Whether "up" or "down" at ``i`` is a move ("was up 5 %") rather than a particle ("set up")."""
    after = tokens[i + 1].word if i + 1 < len(tokens) else ""
    before = tokens[i - 1].word if i > 0 else ""
    return bool(_NUMBER.match(after)) or after in _MOVE_FOLLOWERS or before in _MOVE_PRECEDERS


def _percent_near(tokens: list[_Token], i: int) -> bool:
    """Whether a percentage sits right by the direction word at ``i`` ("fell by 3 %", "0.4 pct lower")."""
    near = [tokens[j].word for j in range(max(0, i - 2), min(len(tokens), i + 4))]
    return any(word in ("%", "pct", "percent") or (word.endswith("%") and word[0].isdigit()) for word in near)


def _subject_evidence(low: str, tokens: list[_Token], used: bytearray, evidence: list[_Evidence]) -> None:
    subjects = _subjects(tokens, used)
    by_last = {subject.last: subject for subject in subjects}
    by_first = {subject.first: subject for subject in subjects}
    paired: set[int] = set()  # subjects (by first token) that found their direction word

    def back(i: int) -> _Subject | None:
        for j in range(i - 1, max(-1, i - 1 - _BACK_WINDOW), -1):
            if tokens[j].word in fl.CLAUSE_BREAKS:
                return None
            subject = by_last.get(j)
            if subject is not None:
                return subject if subject.first not in paired else None
        return None

    def forward(i: int, strict: bool) -> _Subject | None:
        # strict: close by ("grew its annual sales"), not "fell sharply since our sales..."
        for j in range(i + 1, min(len(tokens), i + 1 + (_STRICT_WINDOW if strict else _FORWARD_WINDOW))):
            subject = by_first.get(j)
            if subject is not None:
                return subject if subject.first not in paired else None
            if tokens[j].word in fl.CLAUSE_BREAKS:
                return None
        return None

    for i, token in enumerate(tokens):
        word = token.word
        absolute = False  # better/worse whatever the subject, rather than up/down
        if word in fl.UP_WORDS:
            sign, scale = 1, fl.UP_WORDS[word]
        elif word in fl.DOWN_WORDS:
            sign, scale = -1, fl.DOWN_WORDS[word]
        elif word in fl.BETTER_WORDS or word in fl.WORSE_WORDS:
            sign, scale, absolute = (1 if word in fl.BETTER_WORDS else -1), 1.0, True
        else:
            continue
        if used[token.start] or (word in ("up", "down") and not _is_move(tokens, i)):
            continue
        if word in fl.NEEDS_FIGURE and not (i + 1 < len(tokens) and _NUMBER.match(tokens[i + 1].word)):
            continue
        ahead = word in fl.FORWARD_FIRST or (i + 1 < len(tokens) and tokens[i + 1].word in _INTO)
        subject = (forward(i, False) or back(i)) if ahead else (back(i) or forward(i, True))
        if subject is None:
            if not absolute and _percent_near(tokens, i):
                weight = sign * scale * IMPLICIT_SUBJECT_WEIGHT * DIRECTION_WEIGHT
                evidence.append(_Evidence(weight, f"rule: {word} by a percentage", token.start))
                used[token.start : token.end] = b"\x01" * (token.end - token.start)
            continue
        paired.add(subject.first)
        polarity = 1 if absolute else subject.polarity
        weight = sign * polarity * subject.weight * scale * DIRECTION_WEIGHT
        note = f"rule: {subject.text} {word}"
        if _negated(tokens, i) or _negated(tokens, subject.first):
            weight, note = weight * NEGATION_SCALAR, note + " (negated)"
        evidence.append(_Evidence(weight, note, token.start))
        for j in (subject.first, subject.last, i):
            used[tokens[j].start : tokens[j].end] = b"\x01" * (tokens[j].end - tokens[j].start)

    for subject in subjects:
        if subject.first in paired:
            continue
        first, last = tokens[subject.first], tokens[subject.last]
        start = last.end
        move = _compare(low[start : start + 160].split(";")[0])
        if move is not None:
            sign, note = move
            weight = sign * subject.polarity * subject.weight * COMPARISON_WEIGHT
            evidence.append(_Evidence(weight, f"rule: {subject.text} {note}", first.start))
        elif subject.text in fl.SUBJECT_VALENCE:
            evidence.append(
                _Evidence(fl.SUBJECT_VALENCE[subject.text], f"lexicon: {subject.text}", first.start)
            )
        else:
            continue
        used[first.start : last.end] = b"\x01" * (last.end - first.start)


def _amount(match: re.Match[str], n: int) -> tuple[float, str | None, str | None] | None:
    """Amount ``n`` of a comparison as (value, currency, "%" or None); None for a bare year."""
    text = match.group(f"num{n}").replace(" ", "").replace(",", "")
    currency, unit = match.group(f"cur{n}"), match.group(f"unit{n}")
    try:
        number = float(text)
    except ValueError:
        return None
    if currency is None and unit is None and "." not in text and 1900 <= number <= 2100:
        return None  # a year: "in 2008 compared to 2007" compares nothing
    if unit in _PERCENT_UNITS:
        return number, currency, "%"
    return number * _UNIT_SCALE.get(unit or "", 1.0), currency, None


def _compare(clause: str) -> tuple[int, str] | None:
    """The direction of the first figure compared with an earlier one in ``clause``: +1 up, -1 down."""
    for pattern, first_is_earlier in _COMPARISONS:
        match = pattern.search(clause)
        if match is None:
            continue
        one, two = _amount(match, 1), _amount(match, 2)
        if one is None or two is None or one[2] != two[2]:
            continue
        if one[1] and two[1] and one[1] != two[1]:
            continue  # a different currency: a conversion, not a comparison
        earlier, later = (one[0], two[0]) if first_is_earlier else (two[0], one[0])
        if math.isclose(earlier, later):
            continue
        sign = 1 if later > earlier else -1
        return sign, f"{'up' if sign > 0 else 'down'} ({later:g} vs {earlier:g})"
    return None


def _lexicon_matches(tokens: list[_Token], used: bytearray) -> list[str]:
    return [
        f"lexicon: {token.word}"
        for token in tokens
        if not used[token.start] and fl.LEXICON.get(token.word, 0.0) != 0.0
    ]
