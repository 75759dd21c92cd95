"""Calibrations on disk: ``models/calibration/<version>/`` beside the models, and the active one.

The model registry's rules: a version directory holds ``calibration.json`` (plain JSON) and
``card.json`` (what it was fitted on, the settings, library versions and the file's sha256); it
appears whole or not at all (written aside, then renamed), and ``ACTIVE`` names the version in
use, replaced atomically. Loading checks the name, the card, the hash and the content; anything
off is a ``CalibrationRejected`` naming the reason, and the caller keeps what it had.

The product ships one (``SHIPPED``, fitted by ``tradingctl calibrate`` on the shared prices with
the default settings): it serves until a home has a calibration of its own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import orjson

from services.base.errors import NotFound, Rejected
from services.base.files import sync_directory, write_synced
from services.prediction.calibration import Calibration

DATA_FILE = "calibration.json"
CARD_FILE = "card.json"
ACTIVE_FILE = "ACTIVE"
SHIPPED = Path(__file__).with_name("shipped_calibration")
SHIPPED_VERSION = "shipped"
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")


class CalibrationRejected(Rejected):
    """A calibration file or card failed a check; ``data['reason']`` names which."""


def load_directory(directory: Path, version: str) -> Calibration:
    """The calibration in ``directory``, checked against its card."""
    where = f"calibration {version}"
    try:
        card = orjson.loads((directory / CARD_FILE).read_bytes())
        data = (directory / DATA_FILE).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no {where} in {directory}") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CalibrationRejected(f"{where}: unreadable: {exc}", reason="unreadable") from exc
    digest = hashlib.sha256(data).hexdigest()
    if not isinstance(card, dict) or card.get("sha256") != digest:
        raise CalibrationRejected(
            f"{where}: {DATA_FILE} does not match its card (sha256 {digest[:12]}...): changed or corrupt",
            reason="hash_mismatch",
        )
    try:
        return Calibration.from_json(orjson.loads(data), version)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise CalibrationRejected(f"{where}: {exc}", reason="invalid") from exc


def shipped() -> Calibration:
    """The calibration the product ships."""
    return load_directory(SHIPPED, SHIPPED_VERSION)


def write_version(directory: Path, calibration: Calibration, card: dict[str, Any]) -> None:
    """``calibration.json`` and its card into an existing, empty ``directory``."""
    data = orjson.dumps(calibration.to_json(), option=orjson.OPT_INDENT_2)
    write_synced(directory / DATA_FILE, data)
    full = {**card, "sha256": hashlib.sha256(data).hexdigest(), "file": DATA_FILE}
    write_synced(directory / CARD_FILE, orjson.dumps(full, option=orjson.OPT_INDENT_2))


class CalibrationStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # models/calibration

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def active_version(self) -> str | None:
        try:
            version = orjson.loads((self.root / ACTIVE_FILE).read_bytes())["version"]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            return None
        return version if isinstance(version, str) and _VERSION.fullmatch(version) else None

    def active_stamp(self) -> float | None:
        """When ``ACTIVE`` last changed: a cheap test for a new version to load."""
        try:
            return (self.root / ACTIVE_FILE).stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def load(self, version: str | None = None) -> Calibration:
        """A version (the active one by default), checked."""
        version = version or self.active_version()
        if version is None:
            raise NotFound(f"no active calibration in {self.root}")
        if not _VERSION.fullmatch(version):
            raise CalibrationRejected(f"{version!r} is not a version (v1, v2, ...)", reason="bad_version")
        return load_directory(self.root / version, version)

    def save(self, calibration: Calibration, card: dict[str, Any]) -> str:
        """Write a new version (not yet active) and return its name."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".incoming-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            existing = self.versions()
            number = int(existing[-1][1:]) + 1 if existing else 1
            while True:
                version = f"v{number}"
                for leftover in staging.iterdir():
                    leftover.unlink()
                write_version(staging, calibration, {**card, "version": version})
                try:
                    staging.rename(self.root / version)  # fails if another writer took the name
                except OSError:
                    if (self.root / version).exists():
                        number += 1
                        continue
                    raise
                sync_directory(self.root)
                return version
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def activate(self, version: str) -> None:
        """Point ``ACTIVE`` at ``version``, which must load and check first."""
        self.load(version)
        temporary = self.root / f".{ACTIVE_FILE}-{secrets.token_hex(4)}"
        write_synced(temporary, orjson.dumps({"version": version}))
        temporary.replace(self.root / ACTIVE_FILE)
        sync_directory(self.root)
