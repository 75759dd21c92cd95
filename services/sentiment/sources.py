"""What a news source hands back from a fetch, and how it reports its state for ``health``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from services.base.clock import utc_iso
from services.sentiment.articles import Article

SourceStatus = Literal[
    "ok", "idle", "disabled", "unconfigured", "failing", "rate_limited", "quota_exhausted", "unauthorized"
]
# States in which a source can serve news now (idle: configured, not asked yet).
USABLE: frozenset[str] = frozenset({"ok", "idle"})


@dataclass(slots=True)
class FetchOutcome:
    """The result of asking one source for news about one scope (a symbol, the market, all feeds).

    ``answered`` is True when the source answered (even with nothing new) now or recently enough
    to count as current; ``detail`` says what happened, or why it could not answer.
    """

    provider: str
    answered: bool
    detail: str
    articles: list[Article] = field(default_factory=list)
    requests: int = 0


@dataclass(slots=True)
class SourceHealth:
    """A source's state as ``health`` shows it; kept up to date by the source, read from memory."""

    status: SourceStatus = "idle"
    detail: str = "not asked yet"
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    blocked_until: datetime | None = None

    def succeeded(self, now: datetime, detail: str) -> None:
        self.status, self.detail, self.last_success, self.blocked_until = "ok", detail, now, None

    def failed(
        self, now: datetime, error: str, status: SourceStatus = "failing", until: datetime | None = None
    ) -> None:
        self.status, self.detail = status, error
        self.last_error, self.last_error_at, self.blocked_until = error, now, until

    def to_wire(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "detail": self.detail,
            "last_success": utc_iso(self.last_success) if self.last_success else None,
            "last_error": self.last_error,
            "last_error_at": utc_iso(self.last_error_at) if self.last_error_at else None,
            "blocked_until": utc_iso(self.blocked_until) if self.blocked_until else None,
        }
