"""Settings from defaults, config.toml and the environment; TradingHome; secrets."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from services.base.config import (
    MAX_SOCKET_PATH_BYTES,
    EventsConfig,
    LoggingConfig,
    RedisConfig,
    RpcConfig,
    Secret,
    SectionRegistry,
    Settings,
    TradingHome,
    load_secret,
    load_settings,
    resolve_home,
)
from services.base.errors import ConfigError
from services.base.logs import Redactor


def write_config(home: TradingHome, text: str) -> None:
    home.config_file.write_text(text)


# --- defaults, file, environment ----------------------------------------------------------


def test_defaults_without_config_file(home: TradingHome) -> None:
    assert not home.config_file.exists()
    settings = load_settings(home, env={}, registry=SectionRegistry())
    assert settings.home == home
    assert settings.redis == RedisConfig()
    assert settings.redis.url == ""
    assert settings.rpc == RpcConfig()
    assert settings.rpc.max_message_bytes == 1024 * 1024
    assert settings.rpc.call_timeout_s == 10.0
    assert settings.logging == LoggingConfig()
    assert settings.logging.level == "INFO"
    assert settings.logging.keep_days == 7
    assert settings.events == EventsConfig()
    assert dict(settings.sections) == {}


def test_values_from_config_file(home: TradingHome) -> None:
    write_config(
        home,
        """
[rpc]
call_timeout_s = 3          # an int is accepted for a float
max_batch_size = 50

[logging]
level = "DEBUG"

[redis]
url = "redis://localhost:6390/0"
""",
    )
    settings = load_settings(home, env={}, registry=SectionRegistry())
    assert settings.rpc.call_timeout_s == 3.0
    assert isinstance(settings.rpc.call_timeout_s, float)
    assert settings.rpc.max_batch_size == 50
    assert settings.rpc.connect_attempts == RpcConfig().connect_attempts  # untouched key keeps its default
    assert settings.logging.level == "DEBUG"
    assert settings.redis.url == "redis://localhost:6390/0"


def test_environment_overrides_config_file(home: TradingHome) -> None:
    write_config(home, "[rpc]\ncall_timeout_s = 3.0\nmax_batch_size = 50\n[logging]\nlevel = 'ERROR'\n")
    env = {
        "TRADING__RPC__CALL_TIMEOUT_S": "4.5",
        "TRADING__LOGGING__LEVEL": "WARNING",
        "TRADING__EVENTS__STREAM_MAX_LEN": "5000",
        "TRADING__REDIS__URL": "redis://example:1/2",
        "UNRELATED": "ignored",
    }
    settings = load_settings(home, env=env, registry=SectionRegistry())
    assert settings.rpc.call_timeout_s == 4.5
    assert settings.rpc.max_batch_size == 50  # from the file, not overridden
    assert settings.logging.level == "WARNING"
    assert settings.events.stream_max_len == 5000
    assert settings.redis.url == "redis://example:1/2"


def test_environment_key_is_case_insensitive(home: TradingHome) -> None:
    settings = load_settings(home, env={"TRADING__rpc__Max_Batch_Size": "7"}, registry=SectionRegistry())
    assert settings.rpc.max_batch_size == 7


def test_redis_url_sets_redis_url(home: TradingHome) -> None:
    write_config(home, "[redis]\nurl = 'redis://from-file/0'\n")
    settings = load_settings(home, env={"REDIS_URL": "unix:///tmp/r.sock"}, registry=SectionRegistry())
    assert settings.redis.url == "unix:///tmp/r.sock"
    assert settings.redis.connect_timeout_s == RedisConfig().connect_timeout_s


def test_settings_are_frozen(home: TradingHome) -> None:
    settings = load_settings(home, env={}, registry=SectionRegistry())
    with pytest.raises(AttributeError):
        settings.rpc.call_timeout_s = 1.0  # type: ignore[misc]


def test_load_settings_uses_trading_home_from_env(home: TradingHome) -> None:
    write_config(home, "[rpc]\nmax_batch_size = 9\n")
    settings = load_settings(env={"TRADING_HOME": str(home.root)}, registry=SectionRegistry())
    assert settings.home.root == home.root
    assert settings.rpc.max_batch_size == 9


def test_resolve_home_default_and_env() -> None:
    assert resolve_home({}).root == Path("~/.asx-trading").expanduser().absolute()
    assert resolve_home({"TRADING_HOME": "/tmp/th"}).root == Path("/tmp/th")


# --- errors name what is wrong ------------------------------------------------------------


def load_error(home: TradingHome, config: str | None = None, env: dict[str, str] | None = None) -> str:
    if config is not None:
        write_config(home, config)
    with pytest.raises(ConfigError) as info:
        load_settings(home, env=env or {}, registry=SectionRegistry())
    return str(info.value)


def test_unknown_section_in_file(home: TradingHome) -> None:
    message = load_error(home, "[nosuch]\nkey = 1\n")
    assert "nosuch" in message
    assert "unknown" in message


def test_unknown_key_in_file(home: TradingHome) -> None:
    message = load_error(home, "[rpc]\ncall_timeout = 3.0\n")
    assert "'call_timeout'" in message
    assert "[rpc]" in message


def test_section_that_is_not_a_table(home: TradingHome) -> None:
    message = load_error(home, "rpc = 5\n")
    assert "[rpc]" in message


def test_string_for_int_in_file(home: TradingHome) -> None:
    message = load_error(home, "[rpc]\nmax_batch_size = 'many'\n")
    assert "rpc.max_batch_size" in message
    assert "int" in message


def test_bool_for_int_in_file(home: TradingHome) -> None:
    message = load_error(home, "[rpc]\nconnect_attempts = true\n")
    assert "rpc.connect_attempts" in message


def test_float_for_int_in_file(home: TradingHome) -> None:
    message = load_error(home, "[logging]\nkeep_days = 7.5\n")
    assert "logging.keep_days" in message


def test_bool_for_float_in_file(home: TradingHome) -> None:
    message = load_error(home, "[rpc]\ncall_timeout_s = false\n")
    assert "rpc.call_timeout_s" in message


def test_bad_literal_in_file(home: TradingHome) -> None:
    message = load_error(home, "[logging]\nlevel = 'LOUD'\n")
    assert "logging.level" in message
    assert "'LOUD'" in message
    assert "'DEBUG'" in message  # the allowed choices are listed


def test_malformed_toml_names_the_file(home: TradingHome) -> None:
    message = load_error(home, "[rpc\ncall_timeout_s = \n")
    assert str(home.config_file) in message
    assert "TOML" in message


def test_unknown_section_in_env(home: TradingHome) -> None:
    message = load_error(home, env={"TRADING__NOSUCH__KEY": "1"})
    assert "TRADING__NOSUCH__KEY" in message
    assert "nosuch" in message


def test_unknown_key_in_env(home: TradingHome) -> None:
    message = load_error(home, env={"TRADING__RPC__NOPE": "1"})
    assert "TRADING__RPC__NOPE" in message
    assert "'nope'" in message


def test_string_for_int_in_env(home: TradingHome) -> None:
    message = load_error(home, env={"TRADING__RPC__CONNECT_ATTEMPTS": "abc"})
    assert "TRADING__RPC__CONNECT_ATTEMPTS" in message
    assert "'abc'" in message


def test_bool_for_int_in_env(home: TradingHome) -> None:
    message = load_error(home, env={"TRADING__RPC__CONNECT_ATTEMPTS": "true"})
    assert "rpc.connect_attempts" in message


def test_bad_literal_in_env(home: TradingHome) -> None:
    message = load_error(home, env={"TRADING__LOGGING__LEVEL": "LOUD"})
    assert "logging.level" in message
    assert "'LOUD'" in message


@pytest.mark.parametrize(
    "name", ["TRADING__RPC", "TRADING__RPC__CALL__TIMEOUT", "TRADING____CALL_TIMEOUT_S", "TRADING__RPC__"]
)
def test_malformed_env_var_name(home: TradingHome, name: str) -> None:
    message = load_error(home, env={name: "1"})
    assert name in message
    assert "TRADING__<SECTION>__<KEY>" in message


# --- sections registered by services ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_quantity: int = 100
    max_fraction: float = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchConfig:
    symbols: tuple[str, ...] = ("BHP",)
    interval_s: float = 60.0
    mode: Literal["live", "replay"] = "live"
    cache_dir: Path | None = None
    note: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


@pytest.fixture
def registry() -> SectionRegistry:
    registry = SectionRegistry()
    registry.register("watch", WatchConfig)
    return registry


def test_registered_section_defaults(home: TradingHome, registry: SectionRegistry) -> None:
    settings = load_settings(home, env={}, registry=registry)
    assert settings.section("watch", WatchConfig) == WatchConfig()
    assert isinstance(settings.sections["watch"], WatchConfig)


def test_registered_section_from_file_with_nested_types(home: TradingHome, registry: SectionRegistry) -> None:
    write_config(
        home,
        """
[watch]
symbols = ["CBA", "WES"]
interval_s = 30
mode = "replay"
cache_dir = "~/cache"
weights = { momentum = 0.7, value = 1 }

[watch.limits]
max_quantity = 500
""",
    )
    watch = load_settings(home, env={}, registry=registry).section("watch", WatchConfig)
    assert watch.symbols == ("CBA", "WES")
    assert isinstance(watch.symbols, tuple)
    assert watch.interval_s == 30.0
    assert watch.mode == "replay"
    assert watch.cache_dir == Path("~/cache").expanduser()
    assert watch.note is None
    assert dict(watch.weights) == {"momentum": 0.7, "value": 1.0}
    assert watch.limits == Limits(max_quantity=500, max_fraction=0.25)


def test_registered_section_tuple_from_comma_list_in_env(
    home: TradingHome, registry: SectionRegistry
) -> None:
    env = {
        "TRADING__WATCH__SYMBOLS": "BHP, CBA,WES ,",
        "TRADING__WATCH__NOTE": "plain text, not TOML",
        "TRADING__WATCH__LIMITS": "{ max_quantity = 7, max_fraction = 0.5 }",
        "TRADING__WATCH__WEIGHTS": "{ a = 2 }",
    }
    watch = load_settings(home, env=env, registry=registry).section("watch", WatchConfig)
    assert watch.symbols == ("BHP", "CBA", "WES")
    assert watch.note == "plain text, not TOML"
    assert watch.limits == Limits(max_quantity=7, max_fraction=0.5)
    assert dict(watch.weights) == {"a": 2.0}


def test_registered_section_tuple_from_toml_array_in_env(
    home: TradingHome, registry: SectionRegistry
) -> None:
    watch = load_settings(home, env={"TRADING__WATCH__SYMBOLS": '["NAB"]'}, registry=registry).section(
        "watch", WatchConfig
    )
    assert watch.symbols == ("NAB",)


def test_registered_section_errors_name_nested_keys(home: TradingHome, registry: SectionRegistry) -> None:
    write_config(home, "[watch.limits]\nmax_quantity = 'lots'\n")
    with pytest.raises(ConfigError, match=r"watch\.limits\.max_quantity"):
        load_settings(home, env={}, registry=registry)
    write_config(home, "[watch]\nsymbols = ['BHP', 3]\n")
    with pytest.raises(ConfigError, match=r"watch\.symbols\[1\]"):
        load_settings(home, env={}, registry=registry)
    write_config(home, "[watch.limits]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"'bogus' in \[watch\.limits\]"):
        load_settings(home, env={}, registry=registry)


def test_unregistered_section_is_unknown_for_another_registry(home: TradingHome) -> None:
    write_config(home, "[watch]\ninterval_s = 5\n")
    with pytest.raises(ConfigError, match=r"\[watch\]"):
        load_settings(home, env={}, registry=SectionRegistry())


def test_section_lookup_checks_the_class(home: TradingHome, registry: SectionRegistry) -> None:
    settings = load_settings(home, env={}, registry=registry)
    with pytest.raises(ConfigError, match=r"\[watch\]"):
        settings.section("watch", Limits)
    # A section nobody registered reads as the dataclass defaults.
    assert settings.section("absent", Limits) == Limits()


def test_register_rejects_non_dataclass_and_conflicts() -> None:
    registry = SectionRegistry()
    with pytest.raises(TypeError):
        registry.register("plain", dict)
    with pytest.raises(ValueError, match=r"\[rpc\]"):
        registry.register("rpc", WatchConfig)
    registry.register("watch", WatchConfig)
    registry.register("watch", WatchConfig)  # the same class again is fine
    with pytest.raises(ValueError, match=r"\[watch\]"):
        registry.register("watch", Limits)


# --- TradingHome --------------------------------------------------------------------------


def test_trading_home_create_makes_the_tree() -> None:
    root = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp")) / "home"
    old_umask = os.umask(0o022)
    try:
        home = TradingHome(root)
        home.create()
        home.create()  # idempotent
    finally:
        os.umask(old_umask)
    try:
        for directory in (home.root, home.run, home.logs, home.data, home.models, home.backups):
            assert directory.is_dir(), directory
        assert stat.S_IMODE(home.run.stat().st_mode) == 0o700
        assert home.socket_path("rpc") == root / "run" / "rpc.sock"
        assert home.database("paper") == root / "data" / "paper.db"
        assert home.config_file == root / "config.toml"
        assert home.secrets_file == root / "secrets.toml"
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def test_trading_home_too_deep_for_sockets() -> None:
    root = Path("/tmp") / ("at-deep-" + "x" * (MAX_SOCKET_PATH_BYTES - 30))
    assert len(str(root / "run" / "paper_trading.sock")) > MAX_SOCKET_PATH_BYTES
    with pytest.raises(ConfigError, match="TRADING_HOME") as info:
        TradingHome(root).create()
    assert str(MAX_SOCKET_PATH_BYTES) in str(info.value)
    assert not root.exists()  # checked before anything is created


def test_trading_home_just_short_enough() -> None:
    base = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    try:
        room = MAX_SOCKET_PATH_BYTES - len(str(base / "run" / "paper_trading.sock")) - 1
        root = base / ("y" * room)
        assert len(str(root / "run" / "paper_trading.sock").encode()) == MAX_SOCKET_PATH_BYTES
        TradingHome(root).create()
        assert (root / "run").is_dir()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- secrets ------------------------------------------------------------------------------


def write_secrets(home: TradingHome, text: str, mode: int) -> None:
    home.secrets_file.write_text(text)
    os.chmod(home.secrets_file, mode)


def test_load_secret_from_env(home: TradingHome) -> None:
    redactor = Redactor()
    secret = load_secret(
        "api_token", env_var="ASX_API_TOKEN", home=home, env={"ASX_API_TOKEN": "tok-123456"}, redact=redactor
    )
    assert secret is not None
    assert secret.reveal() == "tok-123456"
    assert redactor.text("header tok-123456 end") == "header *** end"


def test_env_secret_wins_over_file(home: TradingHome) -> None:
    write_secrets(home, 'api_token = "from-file-value"\n', 0o600)
    secret = load_secret(
        "api_token", env_var="ASX_API_TOKEN", home=home, env={"ASX_API_TOKEN": "from-env-value"}
    )
    assert secret == Secret("from-env-value")


def test_load_secret_from_secrets_file(home: TradingHome) -> None:
    write_secrets(home, 'api_token = "file-secret-99"\n', 0o600)
    redactor = Redactor()
    secret = load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={}, redact=redactor)
    assert secret is not None
    assert secret.reveal() == "file-secret-99"
    assert redactor.text("file-secret-99") == "***"


def test_missing_secret_is_none(home: TradingHome) -> None:
    assert load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={}) is None
    write_secrets(home, 'other = "x"\n', 0o600)
    assert load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={"ASX_API_TOKEN": ""}) is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secrets_file_readable_by_others_is_refused(home: TradingHome, mode: int) -> None:
    write_secrets(home, 'api_token = "leaky-secret"\n', mode)
    with pytest.raises(ConfigError) as info:
        load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={})
    message = str(info.value)
    assert str(home.secrets_file) in message
    assert "600" in message
    assert "leaky-secret" not in message


def test_secret_must_be_a_string(home: TradingHome) -> None:
    write_secrets(home, "api_token = 12345\n", 0o600)
    with pytest.raises(ConfigError, match="api_token"):
        load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={})


def test_malformed_secrets_file(home: TradingHome) -> None:
    write_secrets(home, "api_token = \n", 0o600)
    with pytest.raises(ConfigError) as info:
        load_secret("api_token", env_var="ASX_API_TOKEN", home=home, env={})
    assert str(home.secrets_file) in str(info.value)


def test_secret_never_prints_its_value() -> None:
    secret = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "hunter2" not in repr([secret, {"token": secret}])
    assert "***" in repr(secret)
    assert secret.reveal() == "hunter2-very-secret"


def test_secret_equality_and_hash() -> None:
    assert Secret("abc") == Secret("abc")
    assert Secret("abc") != Secret("abd")
    assert Secret("abc") != "abc"
    assert len({Secret("abc"), Secret("abc")}) == 1


def test_settings_repr_is_not_affected_by_secrets(home: TradingHome) -> None:
    # Settings carries no secrets at all: they are loaded separately.
    settings = load_settings(home, env={"ASX_API_TOKEN": "tok-not-in-settings"}, registry=SectionRegistry())
    assert isinstance(settings, Settings)
    assert "tok-not-in-settings" not in repr(settings)


def test_another_stack_process_section_is_left_to_its_owner(home: TradingHome) -> None:
    # One config.toml serves every process: [manager] is validated by the manager only.
    home.config_file.write_text("[manager]\nbackoff_initial_s = 'not checked here'\n")
    env = {"TRADING__PAPER_TRADING__ANYTHING": "1"}
    settings = load_settings(home, env=env, registry=SectionRegistry())
    assert "manager" not in settings.sections


def test_a_misspelt_stack_section_is_still_unknown(home: TradingHome) -> None:
    home.config_file.write_text("[managr]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown config section \[managr\]"):
        load_settings(home, env={}, registry=SectionRegistry())


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("[rpc]\nmax_message_bytes = 0\n", "max_message_bytes"),
        ("[rpc]\ncall_timeout_s = -1\n", "call_timeout_s"),
        ("[rpc]\nmax_connections = 2\n", "max_connections"),
        ("[redis]\nping_interval_s = 0\n", "ping_interval_s"),
        ("[logging]\nkeep_days = 0\n", "keep_days"),
        ("[events]\nconsumer_block_ms = 0\n", "consumer_block_ms"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_key(home: TradingHome, table: str, named: str) -> None:
    write_config(home, table)
    with pytest.raises(ConfigError, match=named):
        load_settings(home, env={}, registry=SectionRegistry())


@pytest.mark.parametrize("value", [-1, 10**12, float("nan"), float("inf")])
def test_every_number_of_every_section_has_a_range(value: float) -> None:
    from services.base.config import build_dataclass
    from services.market_data.config import MarketDataConfig
    from services.paper_trading.config import PaperTradingConfig

    with pytest.raises(ConfigError, match=r"paper_trading\.price_timeout_s: .* out of range"):
        build_dataclass(PaperTradingConfig, {"price_timeout_s": value}, where="paper_trading")
    whole = int(value) if value == value and abs(value) < 1e13 else -1  # an int setting: no NaN
    with pytest.raises(ConfigError, match=r"market_data\.history_days"):
        build_dataclass(MarketDataConfig, {"history_days": whole}, where="market_data")
