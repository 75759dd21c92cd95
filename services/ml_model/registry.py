"""The model registry on disk: ``models/<scope>/<model>/<version>/`` and the active version.

A version directory holds ``model.skops`` (saved with skops, never pickle) and ``card.json``: the
features, training window, parameters, walk-forward metrics, library versions and the file's
sha256. ``<scope>/<model>/ACTIVE`` names the version in use. A version appears whole or not at
all (written aside, then renamed), and the active pointer is replaced atomically.

Loading checks, in order: the names (no path tricks), the card, the file's hash, the feature
list, the label (when the caller names one), and every type the file would build against an
allow-list. Anything off is a
``ModelRejected`` error naming the reason; the caller keeps whatever version it had.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import skops.io as sio  # type: ignore[import-untyped]
from skops.io.exceptions import UntrustedTypesFoundException  # type: ignore[import-untyped]

from services.base.errors import InvalidParams, NotFound, Rejected
from services.base.files import sync_directory, write_synced
from services.ml_model.features import FEATURE_NAMES

POOLED = "pooled"
MODEL_FILE = "model.skops"
CARD_FILE = "card.json"
ACTIVE_FILE = "ACTIVE"

_MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_SYMBOL = re.compile(r"\^?[A-Z0-9]{1,12}(\.[A-Z]{1,4})?")
_VERSION = re.compile(r"v([1-9][0-9]{0,8})")

# Types a model file may contain beyond those skops trusts by default. Everything else is refused.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.model_selection._split.TimeSeriesSplit",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)


class ModelRejected(Rejected):
    """A model file or card failed a check; ``data['reason']`` names which."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    scope: str
    name: str
    version: str
    model: Any
    card: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.scope, self.name


def check_model_name(name: object, *, field: str = "model_name") -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise InvalidParams(
            "a model name is lower-case letters, digits and _ (e.g. random_forest)", field=field
        )
    return name


def check_scope(scope: object, *, field: str = "symbol") -> str:
    """``pooled`` or a ticker such as ``CBA.AX``: the name of a directory under ``models/``."""
    if scope == POOLED:
        return POOLED
    if not isinstance(scope, str) or not _SYMBOL.fullmatch(scope):
        raise InvalidParams("a symbol is a ticker such as CBA.AX, or 'pooled'", field=field)
    return scope


def check_version(version: object, *, field: str = "version") -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidParams("a version is v followed by a number, e.g. v3", field=field)
    return version


def _version_number(version: str) -> int:
    match = _VERSION.fullmatch(version)
    return int(match.group(1)) if match else 0


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    # -- reading --------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and (path.name == POOLED or _SYMBOL.fullmatch(path.name)):
                found.append(path.name)
        return found

    def model_names(self, scope: str) -> list[str]:
        directory = self.root / check_scope(scope)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and _MODEL_NAME.fullmatch(p.name))

    def versions(self, scope: str, name: str) -> list[str]:
        directory = self._model_dir(scope, name)
        if not directory.is_dir():
            return []
        names = [p.name for p in directory.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(names, key=_version_number)

    def active_version(self, scope: str, name: str) -> str | None:
        """The version ``ACTIVE`` names, or None when there is none (or it is unreadable)."""
        try:
            pointer = orjson.loads((self._model_dir(scope, name) / ACTIVE_FILE).read_bytes())
            version = pointer["version"]
            return check_version(version)
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, InvalidParams):
            return None

    def active_stamp(self, scope: str, name: str) -> float | None:
        """When ``ACTIVE`` last changed: a cheap test for a new version to load."""
        try:
            return (self._model_dir(scope, name) / ACTIVE_FILE).stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def card(self, scope: str, name: str, version: str) -> dict[str, Any]:
        path = self._version_dir(scope, name, version) / CARD_FILE
        try:
            card = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(f"no model {name} {version} for {scope}", scope=scope, model=name) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ModelRejected(
                f"{scope}/{name}/{version}: card unreadable: {exc}", reason="card_unreadable"
            ) from exc
        if not isinstance(card, dict):
            raise ModelRejected(f"{scope}/{name}/{version}: card is not an object", reason="card_unreadable")
        return card

    def load(
        self, scope: str, name: str, version: str | None = None, *, label: Mapping[str, Any] | None = None
    ) -> LoadedModel:
        """Load and verify a version (the active one by default); with ``label``, the card's label
        (horizon and threshold) must be that one."""
        scope, name = check_scope(scope), check_model_name(name)
        if version is None:
            version = self.active_version(scope, name)
            if version is None:
                raise NotFound(f"no active {name} model for {scope}", scope=scope, model=name)
        version = check_version(version)
        where = f"{scope}/{name}/{version}"
        card = self.card(scope, name, version)
        path = self._version_dir(scope, name, version) / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelRejected(
                f"{where}: model file unreadable: {exc.strerror}", reason="unreadable"
            ) from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != card.get("sha256"):
            raise ModelRejected(
                f"{where}: model file does not match its card (sha256 {actual[:12]}…, card says "
                f"{str(card.get('sha256'))[:12]}…): changed or corrupt",
                reason="hash_mismatch",
            )
        if card.get("features") != list(FEATURE_NAMES):
            raise ModelRejected(
                f"{where}: trained on other features than this version computes", reason="feature_mismatch"
            )
        if label is not None and card.get("label") != dict(label):
            raise ModelRejected(
                f"{where}: trained for label {card.get('label')}, this service serves {dict(label)} "
                "(ml_model.horizon and threshold)",
                reason="label_mismatch",
            )
        # skops refuses, before building anything, a file with a type outside these and its defaults.
        try:
            model = sio.loads(data, trusted=sorted(TRUSTED_TYPES))
        except UntrustedTypesFoundException as exc:
            raise ModelRejected(f"{where}: refusing to load {exc}", reason="untrusted_types") from exc
        except Exception as exc:  # skops raises many kinds on a damaged file
            raise ModelRejected(f"{where}: cannot be loaded: {exc}", reason="unreadable") from exc
        if not hasattr(model, "predict") or not np.array_equal(getattr(model, "classes_", []), [0, 1]):
            raise ModelRejected(f"{where}: not an up/down classifier", reason="not_a_classifier")
        return LoadedModel(scope, name, version, model, card)

    # -- writing --------------------------------------------------------------------------

    def save(self, scope: str, name: str, model: Any, card: dict[str, Any]) -> str:
        """Write a new version (not yet active) and return its name."""
        directory = self._model_dir(scope, name)
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".incoming-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            data = sio.dumps(model)
            digest = hashlib.sha256(data).hexdigest()
            write_synced(staging / MODEL_FILE, data)
            existing = self.versions(scope, name)
            number = _version_number(existing[-1]) + 1 if existing else 1
            while True:
                version = f"v{number}"
                full_card = {**card, "scope": scope, "model": name, "version": version,
                             "file": MODEL_FILE, "sha256": digest}  # fmt: skip
                write_synced(staging / CARD_FILE, orjson.dumps(full_card, option=orjson.OPT_INDENT_2))
                try:
                    staging.rename(directory / version)  # fails if another writer took the name
                    sync_directory(directory)
                except OSError:
                    if (directory / version).exists():  # taken meanwhile (or a stray file): the next
                        number += 1
                        continue
                    raise
                return version
        finally:
            if staging.exists():
                for leftover in staging.iterdir():
                    leftover.unlink()
                staging.rmdir()

    def activate(self, scope: str, name: str, version: str, *, verify: bool = True) -> None:
        """Point ``ACTIVE`` at ``version``, which must load and verify first (unless the caller
        has just loaded it)."""
        if verify:
            self.load(scope, name, version)
        directory = self._model_dir(scope, name)
        temporary = directory / f".{ACTIVE_FILE}-{secrets.token_hex(4)}"
        write_synced(temporary, orjson.dumps({"version": version}))
        os.replace(temporary, directory / ACTIVE_FILE)
        sync_directory(directory)

    # -- paths ----------------------------------------------------------------------------

    def _model_dir(self, scope: str, name: str) -> Path:
        return self.root / check_scope(scope) / check_model_name(name)

    def _version_dir(self, scope: str, name: str, version: str) -> Path:
        return self._model_dir(scope, name) / check_version(version)
