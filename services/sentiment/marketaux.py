"""MarketAux news through httpx: the real HTTP client behind a small seam, with the plan's limits.

``MarketAuxSource`` asks ``/v1/news/all`` for one symbol (or the market) per request, keeps the
daily quota (counted before each request and stored, so a restart does not forget it), backs off
on 429, treats 402 as "no more calls today" and a refused token as a configuration problem. Tests
hand it an ``httpx`` transport that answers with recorded responses; nothing else changes.

The token travels only in the query string of the request; no message built here contains a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from services.base.config import Secret
from services.sentiment.articles import Article, Highlight, Mention, plain_text
from services.sentiment.config import MarketAuxConfig
from services.sentiment.sources import FetchOutcome, SourceHealth

log = logging.getLogger("services.sentiment.marketaux")

NAME = "marketaux"


class UsageLedger(Protocol):
    """Where the day's request count is kept (the service's database)."""

    async def usage(self, provider: str, day: str) -> tuple[int, bool]: ...

    async def record_usage(self, provider: str, day: str, calls: int, exhausted: bool) -> None: ...

    async def set_usage(self, provider: str, day: str, calls: int, exhausted: bool) -> None: ...


class _Refused(Exception):
    """MarketAux answered with an error status; ``message`` is safe to show (no URL, no token)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class MarketAuxSource:
    name = NAME

    def __init__(
        self,
        config: MarketAuxConfig,
        token: Secret | None,
        ledger: UsageLedger,
        now: Callable[[], datetime],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._token = token
        self._ledger = ledger
        self._now = now
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"),
            transport=transport,
            timeout=config.timeout_s,
            headers={"Accept": "application/json", "User-Agent": "asx-trading-services"},
        )
        self.health = SourceHealth()
        if not config.enabled:
            self.health.status, self.health.detail = "disabled", "disabled in config (sentiment.marketaux)"
        elif token is None:
            self.health.status, self.health.detail = (
                "unconfigured",
                "no MarketAux token (set MARKETAUX_API_TOKEN or marketaux_api_token in secrets.toml)",
            )
        self.day = ""
        self.calls_today = 0
        self.exhausted = False
        self._lock = asyncio.Lock()

    # -- quota ------------------------------------------------------------------------------

    async def load_usage(self) -> None:
        """Read today's request count from the ledger (call once at start-up)."""
        self.day = _utc_day(self._now())
        self.calls_today, self.exhausted = await self._ledger.usage(NAME, self.day)
        if self._quota_used() and self.health.status == "idle":
            self.health.failed(
                self._now(), self._quota_message(), "quota_exhausted", _next_utc_midnight(self._now())
            )

    @property
    def calls_left(self) -> int:
        self._roll_day()
        return 0 if self.exhausted else max(0, self.config.daily_quota - self.calls_today)

    def _roll_day(self) -> None:
        day = _utc_day(self._now())
        if day != self.day:
            self.day, self.calls_today, self.exhausted = day, 0, False
            if self.health.status == "quota_exhausted":
                self.health.status, self.health.detail = "idle", "new quota day"

    def _quota_used(self) -> bool:
        return self.exhausted or self.calls_today >= self.config.daily_quota

    def _quota_message(self) -> str:
        used = f"{self.calls_today}/{self.config.daily_quota} requests"
        reason = "MarketAux says the plan's limit is reached" if self.exhausted else f"{used} used"
        return f"MarketAux daily quota exhausted ({reason}); it resets at 00:00 UTC"

    async def _spend_one(self) -> None:
        self.calls_today += 1
        await self._ledger.record_usage(NAME, self.day, self.calls_today, self.exhausted)

    async def _refund_one(self) -> None:
        self.calls_today = max(0, self.calls_today - 1)
        await self._ledger.set_usage(NAME, self.day, self.calls_today, self.exhausted)

    def _backoff_until(self) -> datetime:
        return self._now() + timedelta(seconds=self.config.failure_backoff_s)

    async def _sync_usage(self, headers: httpx.Headers) -> None:
        """Trust the server's count of requests left when it is lower than ours."""
        try:
            remaining = int(headers["X-UsageLimit-Remaining"])
            limit = int(headers.get("X-UsageLimit-Limit", self.config.daily_quota))
        except (KeyError, ValueError):
            return
        used = max(0, limit - remaining)
        if used > self.calls_today:
            self.calls_today = used
            await self._ledger.record_usage(NAME, self.day, self.calls_today, self.exhausted)

    # -- fetching ---------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        """Why no request can be made now, or None."""
        self._roll_day()
        if self.health.status in ("disabled", "unconfigured"):
            return self.health.detail
        now = self._now()
        if self._quota_used():
            return self._quota_message()
        until = self.health.blocked_until
        if until is not None and now < until:
            return f"{self.health.detail} (no requests until {until:%H:%M:%S} UTC)"
        return None

    async def fetch_symbol(self, symbol: str, since: datetime) -> FetchOutcome:
        """Articles about ``symbol`` published after ``since``: one request of the quota."""
        params = {"symbols": symbol, "filter_entities": "true"}
        return await self._fetch(
            params, since, lambda raw: _article(raw, {symbol.upper(): symbol}, None, self.config)
        )

    async def fetch_market(
        self, market_symbol: str, symbols: tuple[str, ...], since: datetime
    ) -> FetchOutcome:
        """General market news (``market_query`` filters), credited to ``market_symbol`` and to any
        configured symbol among the article's entities."""
        wanted = {symbol.upper(): symbol for symbol in symbols}
        return await self._fetch(
            dict(self.config.market_query),
            since,
            lambda raw: _article(raw, wanted, market_symbol, self.config),
        )

    async def _fetch(
        self, params: dict[str, str], since: datetime, parse: Callable[[Any], Article | None]
    ) -> FetchOutcome:
        async with self._lock:  # one request at a time keeps the quota count exact
            reason = self.unavailable()
            if reason is not None:
                return FetchOutcome(NAME, False, reason)
            query = {
                **params,
                "language": "en",
                "published_after": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "limit": str(self.config.articles_per_request),
            }
            before = self.calls_today
            try:
                body = await self._get_with_retries(query)
            except _Refused as exc:
                await self._note_refusal(exc)
                return FetchOutcome(NAME, False, exc.message, requests=self.calls_today - before)
            except httpx.HTTPError as exc:
                message = f"MarketAux unreachable after {self.config.retries + 1} attempts: {_describe(exc)}"
                self.health.failed(self._now(), message, until=self._backoff_until())
                return FetchOutcome(NAME, False, message, requests=self.calls_today - before)
            requests = self.calls_today - before
            articles, skipped = _parse_page(body, parse)
            if articles is None:
                message = "MarketAux answered with something that is not its news format"
                self.health.failed(self._now(), message, until=self._backoff_until())
                return FetchOutcome(NAME, False, message, requests=requests)
            detail = f"{len(articles)} articles" + (f", {skipped} malformed skipped" if skipped else "")
            self.health.succeeded(self._now(), detail)
            return FetchOutcome(NAME, True, detail, articles, requests)

    async def _get_with_retries(self, query: Mapping[str, str]) -> Any:
        assert self._token is not None
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            if self._quota_used():  # a retry would go over the quota
                raise _Refused(0, "quota", self._quota_message())
            await self._spend_one()
            try:
                response = await self._client.get(
                    "/news/all", params={**query, "api_token": self._token.reveal()}
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    await self._refund_one()  # never reached MarketAux
                if attempt == attempts:
                    raise
                error = _describe(exc)
            else:
                await self._sync_usage(response.headers)
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        return None
                refusal = _refusal(response)
                if response.status_code < 500 or attempt == attempts:
                    raise refusal
                error = refusal.message
            delay = self.config.retry_backoff_s * 2 ** (attempt - 1)
            log.warning(
                "MarketAux: %s; retrying in %.1fs (%d attempts left)", error, delay, attempts - attempt
            )
            await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _note_refusal(self, exc: _Refused) -> None:
        now = self._now()
        if exc.status in (0, 402):
            if exc.status == 402:
                self.exhausted = True
                # Stored, so that a restart today does not ask again.
                await self._ledger.record_usage(NAME, self.day, self.calls_today, True)
            self.health.failed(now, self._quota_message(), "quota_exhausted", _next_utc_midnight(now))
        elif exc.status == 429:
            wait = exc.retry_after or self.config.rate_limit_backoff_s
            self.health.failed(now, exc.message, "rate_limited", now + timedelta(seconds=wait))
        elif exc.status in (401, 403):
            until = now + timedelta(seconds=self.config.auth_failure_backoff_s)
            self.health.failed(now, exc.message, "unauthorized", until)
        else:
            self.health.failed(now, exc.message, until=self._backoff_until())

    async def aclose(self) -> None:
        await self._client.aclose()


def _refusal(response: httpx.Response) -> _Refused:
    code, message = "", ""
    with contextlib.suppress(ValueError, AttributeError):
        error = response.json().get("error") or {}
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    retry_after: float | None = None
    with contextlib.suppress(KeyError, ValueError):
        retry_after = float(response.headers["Retry-After"])
    status = response.status_code
    meaning = {
        401: "refused the token",
        402: "says the plan's usage limit is reached",
        403: "refused access to this endpoint on the current plan",
        429: "rate limit reached",
    }.get(status, "server error" if status >= 500 else "refused the request")
    text = f"MarketAux {meaning} (HTTP {status}{' ' + code if code else ''})"
    if message:
        text += f": {message[:200]}"
    return _Refused(status, code, text, retry_after)


def _parse_page(body: Any, parse: Callable[[Any], Article | None]) -> tuple[list[Article] | None, int]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return None, 0
    articles = []
    for raw in body["data"]:
        try:
            articles.append(parse(raw))
        except (TypeError, ValueError, AttributeError, OverflowError):  # a field of the wrong shape
            articles.append(None)
    kept = [article for article in articles if article is not None]
    return kept, len(articles) - len(kept)


def _article(
    raw: Any, wanted: Mapping[str, str], market_symbol: str | None, config: MarketAuxConfig
) -> Article | None:
    """One article of the answer, or None when a field it cannot do without is missing or bad."""
    if not isinstance(raw, dict):
        return None
    url, title = raw.get("url"), raw.get("title")
    try:
        published = datetime.fromisoformat(str(raw.get("published_at"))).astimezone(UTC)
    except ValueError:
        return None
    if not isinstance(url, str) or not url.startswith("http") or not isinstance(title, str) or not title:
        return None
    entities = [entity for entity in raw.get("entities") or [] if isinstance(entity, dict)]
    mentions: list[Mention] = []
    for entity in entities:
        symbol = wanted.get(str(entity.get("symbol", "")).upper())
        if symbol is not None and all(m.symbol != symbol for m in mentions):
            mentions.append(_mention(symbol, entity, config))
    if market_symbol is not None:
        scores = [s for s in (_number(e.get("sentiment_score")) for e in entities) if s is not None]
        matches = [m for m in (_number(e.get("match_score")) for e in entities) if m is not None]
        relevance = min(1.0, max(matches) / config.full_match_score) if matches else 0.5
        provider = round(sum(scores) / len(scores), 4) if scores else None
        mentions.append(Mention(market_symbol, max(relevance, 0.1), provider))
    elif not mentions and len(wanted) == 1:
        # Asked for one symbol and MarketAux filtered the entities away: it is still about it.
        mentions.append(Mention(next(iter(wanted.values())), 0.5))
    if not mentions:
        return None
    summary = raw.get("description") or raw.get("snippet") or ""
    return Article(
        url=url,
        title=plain_text(title),
        summary=plain_text(str(summary))[:2000],
        source=str(raw.get("source") or "").lower().removeprefix("www.") or "marketaux",
        provider=NAME,
        published_at=published,
        mentions=tuple(mentions),
    )


def _mention(symbol: str, entity: Mapping[str, Any], config: MarketAuxConfig) -> Mention:
    match = _number(entity.get("match_score"))
    relevance = 0.5 if match is None else min(1.0, max(0.1, match / config.full_match_score))
    highlights = tuple(
        Highlight(
            plain_text(str(h.get("highlight", ""))),
            _number(h.get("sentiment")),
            str(h.get("highlighted_in", "")),
        )
        for h in entity.get("highlights") or []
        if isinstance(h, dict) and h.get("highlight")
    )
    score = _number(entity.get("sentiment_score"))
    if score is None:
        scored = [h.sentiment for h in highlights if h.sentiment is not None]
        score = round(sum(scored) / len(scored), 4) if scored else None
    return Mention(symbol, round(relevance, 4), score, highlights)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def _describe(exc: BaseException) -> str:
    # httpx puts the URL (with the token) into some messages: name the failure only.
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within the timeout ({type(exc).__name__})"
    return type(exc).__name__


def _utc_day(now: datetime) -> str:
    return now.astimezone(UTC).date().isoformat()


def _next_utc_midnight(now: datetime) -> datetime:
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
