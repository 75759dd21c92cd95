"""News articles as every source hands them over, and the rules for telling two of them apart.

An article is one story with its mentions: the symbols (or the market) it is about, each with a
relevance 0..1 and, when the provider scored it, the provider's sentiment for that entity.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from html import unescape
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that only track the reader; two URLs differing in them are one article.
_TAGS = re.compile(r"<[^>]+>")
_TRACKING = re.compile(r"^(utm_\w+|fbclid|gclid|mc_cid|mc_eid|ref|cmpid|ocid|sr_share)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Highlight:
    text: str
    sentiment: float | None
    where: str  # "title" or "main_text"


@dataclass(frozen=True, slots=True)
class Mention:
    symbol: str
    relevance: float
    # The provider's own sentiment for this entity (MarketAux), else None.
    provider_score: float | None = None
    highlights: tuple[Highlight, ...] = ()


@dataclass(frozen=True, slots=True)
class Article:
    url: str
    title: str
    summary: str
    source: str  # publisher domain, e.g. "abc.net.au"
    provider: str  # "marketaux" or "rss"
    published_at: datetime  # UTC
    mentions: tuple[Mention, ...]

    @property
    def text(self) -> str:
        """What our scorer reads: the title, then the summary."""
        if not self.summary:
            return self.title
        return f"{self.title.rstrip(' .')}. {self.summary}"


def url_key(url: str) -> str:
    """``url`` without what does not change the article: scheme, ``www.``, tracking parameters,
    fragment, trailing slash and letter case of the host."""
    parts = urlsplit(url.strip())
    host = parts.netloc.lower().removeprefix("www.")
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query) if not _TRACKING.match(k)))
    return urlunsplit(("", host, parts.path.rstrip("/"), query, "")).removeprefix("//")


def plain_text(html: str) -> str:
    """Text without tags or entities, whitespace collapsed."""
    return " ".join(unescape(_TAGS.sub(" ", html)).split())


def title_key(title: str) -> str:
    """Lower case letters and digits separated by single spaces, accents removed."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


def same_story(key_a: str, key_b: str, threshold: float) -> bool:
    """Whether two normalised titles are near-identical (difflib ratio at least ``threshold``)."""
    if not key_a or not key_b:  # nothing left after normalising (e.g. a non-Latin title)
        return False
    if key_a == key_b:
        return True
    matcher = difflib.SequenceMatcher(None, key_a, key_b, autojunk=False)
    # The quick upper bounds skip the full comparison for titles that cannot match.
    return (
        matcher.real_quick_ratio() >= threshold
        and matcher.quick_ratio() >= threshold
        and matcher.ratio() >= threshold
    )


def source_domain(url: str) -> str:
    """``https://www.abc.net.au/news/...`` -> ``abc.net.au``."""
    return urlsplit(url).netloc.lower().removeprefix("www.").split(":")[0]


class AliasMatcher:
    """Finds which symbols a text is about from company aliases, on word boundaries.

    An alias written all in capitals (an acronym: ANZ, NAB) matches only in capitals; any other
    alias matches in any letter case.
    """

    def __init__(self, aliases: Mapping[str, Iterable[str]]) -> None:
        self._patterns: dict[str, list[re.Pattern[str]]] = {}
        for symbol, names in aliases.items():
            names = list(names)
            exact = [name for name in names if name.isupper()]
            loose = [name for name in names if not name.isupper()]
            patterns = []
            if exact:
                patterns.append(re.compile(_alternation(exact)))
            if loose:
                patterns.append(re.compile(_alternation(loose), re.IGNORECASE))
            self._patterns[symbol] = patterns

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self._patterns)

    def hits(self, symbol: str, text: str) -> int:
        return sum(len(pattern.findall(text)) for pattern in self._patterns.get(symbol, ()))

    def relevance(self, symbol: str, title: str, summary: str) -> float:
        """1.0 when the title names the company; otherwise 0.5 for one mention in the summary,
        0.25 more for each further one (up to 1.0); 0.0 when it is not mentioned."""
        if self.hits(symbol, title):
            return 1.0
        count = self.hits(symbol, summary)
        return 0.0 if count == 0 else min(1.0, 0.5 + 0.25 * (count - 1))


def _alternation(names: list[str]) -> str:
    # Longest first, so "ASX 200" wins over "ASX". Lookarounds rather than \b: \b only works next to
    # a word character, and an alias may begin or end with another ("S&P/ASX 200", "A.N.Z.").
    escaped = sorted((re.escape(name.strip()) for name in names), key=len, reverse=True)
    return r"(?<!\w)(?:" + "|".join(escaped) + r")(?!\w)"
