"""Settings: frozen dataclasses with defaults, read from ``config.toml`` and the environment.

Precedence, lowest first: field defaults, ``$TRADING_HOME/config.toml``, environment variables
``TRADING__<SECTION>__<KEY>``. An unknown section or key, or a value of the wrong type, raises
``ConfigError`` naming it. Services add their own sections with ``register_section``.

Secrets never live in ``config.toml``: they come from the environment or from
``$TRADING_HOME/secrets.toml`` (which must be mode 0600) and are wrapped in ``Secret`` so that
printing one shows ``***``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from services.base.errors import ConfigError

ENV_PREFIX = "TRADING__"
DEFAULT_HOME = "~/.asx-trading"
# sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
# The longest socket file name a service uses, so a too-deep home fails at start-up.
LONGEST_SOCKET_NAME = "paper_trading.sock"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TradingHome:
    """The directory tree under ``TRADING_HOME``."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.toml"

    @property
    def synthetic_marker(self) -> Path:
        """Present in a home whose market is generated (the demo): every output says SYNTHETIC."""
        return self.root / "SYNTHETIC"

    @property
    def synthetic(self) -> bool:
        return self.synthetic_marker.exists()

    def socket_path(self, service: str) -> Path:
        return self.run / f"{service}.sock"

    def database(self, service: str) -> Path:
        return self.data / f"{service}.db"

    def create(self) -> None:
        """Create the tree, private to its owner: every directory 0700 (made so if it was not)."""
        check_socket_room(self.run)
        for directory in (self.root, self.run, self.logs, self.data, self.models, self.backups):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if directory.stat().st_mode & 0o077:
                os.chmod(directory, 0o700)


def check_socket_room(run_dir: Path, name: str = LONGEST_SOCKET_NAME) -> None:
    path = str(run_dir.absolute() / name).encode()
    if len(path) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"TRADING_HOME is too deep for Unix sockets: {path.decode()!r} is {len(path)} bytes, "
            f"the limit is {MAX_SOCKET_PATH_BYTES}; choose a shorter TRADING_HOME"
        )


def resolve_home(env: Mapping[str, str] | None = None) -> TradingHome:
    env = os.environ if env is None else env
    raw = env.get("TRADING_HOME") or DEFAULT_HOME
    return TradingHome(Path(raw).expanduser().absolute())


# --- base sections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    # Empty: the manager runs a private redis-server under run/. REDIS_URL also sets this.
    url: str = ""
    connect_timeout_s: float = 2.0
    max_backoff_s: float = 5.0
    # How often a connected service pings Redis, so health notices an outage.
    ping_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "max_backoff_s", "ping_interval_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be above 0 and at most 3600")


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcConfig:
    max_message_bytes: int = 1024 * 1024
    call_timeout_s: float = 10.0
    max_in_flight_per_connection: int = 256  # a batch's calls count each
    max_in_flight_total: int = 2048  # over every connection of a service
    max_batch_size: int = 256
    max_connections: int = 256
    # A connection that sends nothing whole this long after connecting, or keeps a partial line
    # this long, is closed.
    silent_timeout_s: float = 30.0
    drain_timeout_s: float = 5.0
    connect_attempts: int = 5

    def __post_init__(self) -> None:
        if not 1024 <= self.max_message_bytes <= 256 * 1024 * 1024:
            raise ValueError("max_message_bytes must be between 1024 and 268435456")
        if not 0 < self.call_timeout_s <= 3600 or not 0 < self.silent_timeout_s <= 3600:
            raise ValueError("call_timeout_s and silent_timeout_s must be above 0 and at most 3600")
        if not 0 <= self.drain_timeout_s <= 600:
            raise ValueError("drain_timeout_s must be between 0 and 600")
        if self.max_in_flight_per_connection < 1 or self.max_batch_size < 1 or self.connect_attempts < 1:
            raise ValueError("max_in_flight_per_connection, max_batch_size and connect_attempts must be >= 1")
        if self.max_in_flight_total < self.max_in_flight_per_connection:
            raise ValueError("max_in_flight_total must be at least max_in_flight_per_connection")
        if self.max_connections < 8:
            raise ValueError("max_connections must be at least 8 (the manager and the services need some)")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    keep_days: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.keep_days <= 3650:
            raise ValueError("keep_days must be between 1 and 3650")


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsConfig:
    stream_max_len: int = 100_000
    # Sent durable events are kept this long so they can be re-published if Redis restarts
    # with its data lost (the embedded server runs without persistence).
    outbox_retention_days: float = 7.0
    consumer_block_ms: int = 1000

    def __post_init__(self) -> None:
        if self.stream_max_len < 1000 or not 0 < self.outbox_retention_days <= 365:
            raise ValueError("stream_max_len must be >= 1000 and outbox_retention_days in (0, 365]")
        if not 10 <= self.consumer_block_ms <= 60_000:
            raise ValueError("consumer_block_ms must be between 10 and 60000")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    home: TradingHome
    redis: RedisConfig = field(default_factory=RedisConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    # Sections registered by services, parsed into their own dataclasses.
    sections: Mapping[str, Any] = field(default_factory=dict)

    def section(self, name: str, cls: type[T]) -> T:
        value = self.sections.get(name)
        if value is None:
            return cls()
        if not isinstance(value, cls):
            raise ConfigError(f"section [{name}] is a {type(value).__name__}, not {cls.__name__}")
        return value


BASE_SECTIONS: dict[str, type] = {
    "redis": RedisConfig,
    "rpc": RpcConfig,
    "logging": LoggingConfig,
    "events": EventsConfig,
}


# Sections that belong to one process of the stack. Each process validates its own; the others
# pass them over, so one config.toml (and one environment) serves every process.
# The stack's config sections and the module that declares each: the one list of them, so
# ``check_whole_config`` can check every section before anything starts (a process checks only
# the sections it has imported, and skips the others).
STACK_SECTIONS: dict[str, str] = {
    "manager": "services.management.catalog",
    "market_data": "services.market_data.config",
    "sentiment": "services.sentiment.config",
    "ml_model": "services.ml_model.config",
    "prediction": "services.prediction.config",
    "scheduler": "services.scheduler.config",
    "paper_trading": "services.paper_trading.config",
}


class SectionRegistry:
    """Section name -> dataclass, for the sections services add."""

    def __init__(self) -> None:
        self._sections: dict[str, type] = {}

    def register(self, name: str, cls: type) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"section [{name}] must be a dataclass")
        known = self._sections.get(name) or BASE_SECTIONS.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"section [{name}] is already registered to {known.__name__}")
        self._sections[name] = cls

    def items(self) -> Iterable[tuple[str, type]]:
        return self._sections.items()

    def get(self, name: str) -> type | None:
        return self._sections.get(name)


SECTIONS = SectionRegistry()


def register_section(name: str, cls: type[T]) -> type[T]:
    SECTIONS.register(name, cls)
    return cls


def load_settings(
    home: TradingHome | None = None,
    env: Mapping[str, str] | None = None,
    registry: SectionRegistry | None = None,
) -> Settings:
    """Read config.toml and the environment into ``Settings``; raise ``ConfigError`` on any fault."""
    env = os.environ if env is None else env
    home = home or resolve_home(env)
    registry = registry or SECTIONS
    raw = _read_toml(home.config_file)
    _apply_env(raw, env, registry)
    if env.get("REDIS_URL"):
        raw.setdefault("redis", {})["url"] = env["REDIS_URL"]

    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, section in raw.items():
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {type(section).__name__}")
        cls = BASE_SECTIONS.get(name) or registry.get(name)
        if cls is None:
            if name in STACK_SECTIONS:
                continue
            raise ConfigError(f"unknown config section [{name}]")
        parsed: Any = build_dataclass(cls, section, where=name)
        (values if name in BASE_SECTIONS else extra)[name] = parsed
    for name, cls in registry.items():
        extra.setdefault(name, cls())
    return Settings(home=home, sections=types.MappingProxyType(extra), **values)


def check_whole_config(home: TradingHome, env: Mapping[str, str] | None = None) -> Settings:
    """Every section of the stack checked, the ones this process does not use too: a
    ``ConfigError`` naming the first bad key. ``tradingctl start`` calls it before starting
    anything."""
    import importlib

    for module in STACK_SECTIONS.values():
        importlib.import_module(module)
    return load_settings(home, env)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from exc


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], registry: SectionRegistry) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        section, key = parts
        cls = BASE_SECTIONS.get(section) or registry.get(section)
        if cls is None:
            if section in STACK_SECTIONS:
                continue
            raise ConfigError(f"environment variable {name}: unknown config section [{section}]")
        hints = typing.get_type_hints(cls)
        if key not in hints:
            raise ConfigError(f"environment variable {name}: unknown key {key!r} in [{section}]")
        raw.setdefault(section, {})[key] = _parse_env_value(value, hints[key], name)


def _parse_env_value(text: str, annotation: Any, where: str) -> Any:
    if _accepts_str(annotation):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if typing.get_origin(annotation) in (tuple, list):
            return [item.strip() for item in text.split(",") if item.strip()]
        raise ConfigError(f"{where}: cannot read {text!r} as {_type_name(annotation)}") from None


def _accepts_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if _is_union(annotation):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return len(args) == 1 and _accepts_str(args[0])
    return False


def build_dataclass(cls: type[T], raw: Mapping[str, Any], *, where: str) -> T:
    """Build a frozen dataclass from plain values, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown key {key!r} in [{where}]")
    kwargs = {key: convert(value, hints[key], f"{where}.{key}") for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from exc


# Every number in the config lies in this range; a section narrows its own further.
SETTING_RANGE = (0, 1_000_000_000)


def _in_range(value: T, where: str) -> T:
    low, high = SETTING_RANGE
    if not (math.isfinite(value) and low <= value <= high):  # type: ignore[arg-type, operator]
        raise ConfigError(
            f"{where}: {value} is out of range: a number in the config is from {low} to {high:,}"
        )
    return value


def convert(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation``, converting where TOML has no exact type."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, where)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _in_range(float(value), where)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
    elif origin in (tuple, list):
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        if isinstance(value, list | tuple):
            items = [convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin in (dict, Mapping) or annotation is dict:
        args = typing.get_args(annotation)
        value_type = args[1] if len(args) == 2 else Any
        if isinstance(value, dict):
            return types.MappingProxyType(
                {str(k): convert(v, value_type, f"{where}.{k}") for k, v in value.items()}
            )
    elif dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, dict):
            return build_dataclass(annotation, value, where=where)
    else:
        raise ConfigError(f"{where}: unsupported setting type {_type_name(annotation)}")
    raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# --- secrets ------------------------------------------------------------------------------


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretSink(typing.Protocol):
    def add(self, value: str) -> None: ...


def load_secret(
    name: str,
    *,
    env_var: str,
    home: TradingHome,
    env: Mapping[str, str] | None = None,
    redact: SecretSink | None = None,
) -> Secret | None:
    """A secret from the environment, else from ``secrets.toml``; ``None`` when not set.

    The value is handed to ``redact`` so that log output masks it wherever it appears.
    """
    env = os.environ if env is None else env
    value = env.get(env_var) or _read_secrets_file(home.secrets_file).get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{home.secrets_file}: {name} must be a string")
    if redact is not None:
        redact.add(value)
    return Secret(value)


def _read_secrets_file(path: Path) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} must be readable by its owner only (chmod 600), it is {oct(mode & 0o777)}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
