"""The model registry on disk: versions, the active pointer, and every check a load makes."""

from __future__ import annotations

import hashlib
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from services.base.errors import InvalidParams, NotFound
from services.ml_model.features import FEATURE_NAMES
from services.ml_model.models import build, native_importance, vote_probability
from services.ml_model.registry import (
    ACTIVE_FILE,
    CARD_FILE,
    MODEL_FILE,
    LoadedModel,
    ModelRegistry,
    ModelRejected,
    check_model_name,
    check_scope,
    check_version,
)
from tests.ml_fakes import Tripwire, signal_data

SCOPE = "CBA.AX"
NAME = "logistic"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return signal_data(200, seed=3)


@pytest.fixture(scope="module")
def fitted(data: tuple[np.ndarray, np.ndarray]) -> Any:
    X, y = data
    return build("logistic", seed=1).fit(X, y)


def make_card(**extra: Any) -> dict[str, Any]:
    return {
        "features": list(FEATURE_NAMES),
        "walk_forward": {"overall": {"model": {"accuracy": 0.61, "roc_auc": 0.64}}},
        **extra,
    }


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def version_dir(registry: ModelRegistry, version: str, scope: str = SCOPE, name: str = NAME) -> Path:
    return registry.root / scope / name / version


def rewrite_card(registry: ModelRegistry, version: str, **changes: Any) -> None:
    path = version_dir(registry, version) / CARD_FILE
    card = orjson.loads(path.read_bytes())
    card.update(changes)
    path.write_bytes(orjson.dumps(card))


def replace_model_file(registry: ModelRegistry, version: str, content: bytes) -> None:
    """Put other bytes in the model file and make the card's hash match them."""
    path = version_dir(registry, version) / MODEL_FILE
    path.write_bytes(content)
    rewrite_card(registry, version, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def rejected_reason(registry: ModelRegistry, version: str | None) -> str:
    with pytest.raises(ModelRejected) as caught:
        registry.load(SCOPE, NAME, version)
    reason: str = caught.value.data["reason"]
    return reason


# -- saving -----------------------------------------------------------------------------------


def test_save_numbers_versions_and_leaves_nothing_behind(registry: ModelRegistry, fitted: Any) -> None:
    assert registry.versions(SCOPE, NAME) == []
    assert registry.save(SCOPE, NAME, fitted, make_card()) == "v1"
    assert registry.save(SCOPE, NAME, fitted, make_card()) == "v2"
    assert registry.versions(SCOPE, NAME) == ["v1", "v2"]
    assert sorted(p.name for p in (registry.root / SCOPE / NAME).iterdir()) == ["v1", "v2"]
    for version in ("v1", "v2"):
        assert sorted(p.name for p in version_dir(registry, version).iterdir()) == [CARD_FILE, MODEL_FILE]
    # A new version is not active until activated.
    assert registry.active_version(SCOPE, NAME) is None


def test_versions_sort_by_number(registry: ModelRegistry, fitted: Any) -> None:
    directory = registry.root / SCOPE / NAME
    for name in ("v2", "v10", "v9", "v1", "v0", "v01", "V3", ".incoming-abc"):
        (directory / name).mkdir(parents=True)
    (directory / "v20").write_text("a file, not a version")
    assert registry.versions(SCOPE, NAME) == ["v1", "v2", "v9", "v10"]
    assert registry.save(SCOPE, NAME, fitted, make_card()) == "v11"
    assert registry.versions(SCOPE, NAME) == ["v1", "v2", "v9", "v10", "v11"]


def test_save_after_v10_gives_v11(registry: ModelRegistry, fitted: Any) -> None:
    directory = registry.root / SCOPE / NAME
    for name in ("v9", "v10"):
        (directory / name).mkdir(parents=True)
        (directory / name / "marker").write_text("taken")
    assert registry.save(SCOPE, NAME, fitted, make_card()) == "v11"
    assert registry.versions(SCOPE, NAME)[-1] == "v11"


def test_a_stray_file_named_like_the_next_version_does_not_make_save_spin(
    registry: ModelRegistry, fitted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = registry.root / SCOPE / NAME
    assert registry.save(SCOPE, NAME, fitted, make_card()) == "v1"
    (directory / "v2").write_text("a file, not a version directory")
    targets: list[str] = []
    rename = Path.rename

    def counted_rename(self: Path, target: Path) -> Path:
        targets.append(Path(target).name)
        if len(targets) > 5:
            raise RuntimeError(f"save() keeps renaming onto the same name: {targets}")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", counted_rename)
    try:
        version = registry.save(SCOPE, NAME, fitted, make_card())
    except OSError:
        version = None  # refusing is fine too; retrying the same name for ever is not
    assert len(targets) == len(set(targets))
    if version is not None:
        assert version in registry.versions(SCOPE, NAME)
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".incoming-")]


def test_the_card_records_the_file_hash_and_where_it_belongs(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card(trained_at="2024-05-01T00:00:00Z"))
    card = orjson.loads((version_dir(registry, version) / CARD_FILE).read_bytes())
    assert (
        card["sha256"]
        == hashlib.sha256((version_dir(registry, version) / MODEL_FILE).read_bytes()).hexdigest()
    )
    assert len(card["sha256"]) == 64
    assert card["scope"] == SCOPE
    assert card["model"] == NAME
    assert card["version"] == version
    assert card["file"] == MODEL_FILE
    assert card["features"] == list(FEATURE_NAMES)
    assert card["trained_at"] == "2024-05-01T00:00:00Z"
    assert registry.card(SCOPE, NAME, version) == card


def test_the_saved_file_is_skops_not_pickle(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    content = (version_dir(registry, version) / MODEL_FILE).read_bytes()
    assert content[:2] == b"PK"  # a zip archive with a JSON schema, as skops writes
    assert sio.get_untrusted_types(data=content)  # skops can read it


# -- activating and loading -------------------------------------------------------------------


def test_activate_then_load_the_active_version(
    registry: ModelRegistry, fitted: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _y = data
    registry.save(SCOPE, NAME, fitted, make_card())
    registry.save(SCOPE, NAME, fitted, make_card(note="second"))
    registry.activate(SCOPE, NAME, "v2")
    assert registry.active_version(SCOPE, NAME) == "v2"
    assert registry.active_stamp(SCOPE, NAME) is not None

    loaded = registry.load(SCOPE, NAME)
    assert isinstance(loaded, LoadedModel)
    assert loaded.version == "v2"
    assert loaded.key == (SCOPE, NAME)
    assert loaded.card["note"] == "second"
    assert np.array_equal(loaded.model.predict_proba(X[:20]), fitted.predict_proba(X[:20]))

    registry.activate(SCOPE, NAME, "v1")
    assert registry.load(SCOPE, NAME).version == "v1"
    # No temporary pointer files are left beside ACTIVE.
    names = sorted(p.name for p in (registry.root / SCOPE / NAME).iterdir())
    assert names == [ACTIVE_FILE, "v1", "v2"]


def test_load_a_named_version_and_the_pooled_scope(registry: ModelRegistry, fitted: Any) -> None:
    assert registry.save("pooled", "random_forest", fitted, make_card()) == "v1"
    loaded = registry.load("pooled", "random_forest", "v1")
    assert loaded.scope == "pooled"
    assert loaded.name == "random_forest"
    assert registry.scopes() == ["pooled"]
    assert registry.model_names("pooled") == ["random_forest"]


def test_nothing_active_or_no_such_version_is_not_found(registry: ModelRegistry, fitted: Any) -> None:
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME)
    registry.save(SCOPE, NAME, fitted, make_card())
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME)  # saved but not activated
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME, "v7")
    with pytest.raises(NotFound):
        registry.card(SCOPE, NAME, "v7")


# -- what a load refuses ----------------------------------------------------------------------


def test_a_changed_byte_is_a_hash_mismatch(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    path = version_dir(registry, version) / MODEL_FILE
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))
    assert rejected_reason(registry, version) == "hash_mismatch"


def test_activating_a_tampered_version_keeps_the_previous_one(registry: ModelRegistry, fitted: Any) -> None:
    registry.save(SCOPE, NAME, fitted, make_card())
    registry.activate(SCOPE, NAME, "v1")
    registry.save(SCOPE, NAME, fitted, make_card())
    path = version_dir(registry, "v2") / MODEL_FILE
    content = bytearray(path.read_bytes())
    content[-10] ^= 0xFF
    path.write_bytes(bytes(content))

    with pytest.raises(ModelRejected) as caught:
        registry.activate(SCOPE, NAME, "v2")
    assert caught.value.data["reason"] == "hash_mismatch"
    assert registry.active_version(SCOPE, NAME) == "v1"
    assert registry.load(SCOPE, NAME).version == "v1"


def test_a_card_without_a_hash_is_a_mismatch(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    rewrite_card(registry, version, sha256=None)
    assert rejected_reason(registry, version) == "hash_mismatch"


@pytest.mark.parametrize(
    "features",
    [
        list(FEATURE_NAMES[:-1]),
        [*FEATURE_NAMES, "sentiment"],
        list(reversed(FEATURE_NAMES)),
        None,
    ],
)
def test_other_features_are_a_feature_mismatch(
    registry: ModelRegistry, fitted: Any, features: list[str] | None
) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    rewrite_card(registry, version, features=features)
    assert rejected_reason(registry, version) == "feature_mismatch"


def test_a_type_outside_the_allow_list_is_refused(
    registry: ModelRegistry, fitted: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _y = data
    version = registry.save(SCOPE, NAME, fitted, make_card())
    hostile = FunctionTransformer(func=operator.neg).fit(X)
    replace_model_file(registry, version, sio.dumps(hostile))
    with pytest.raises(ModelRejected) as caught:
        registry.load(SCOPE, NAME, version)
    assert caught.value.data["reason"] == "untrusted_types"
    assert "_operator.neg" in caught.value.message


def test_an_untrusted_classifier_is_never_built(
    registry: ModelRegistry, fitted: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    version = registry.save(SCOPE, NAME, fitted, make_card())
    tripwire = Tripwire().fit(X, y)
    replace_model_file(registry, version, sio.dumps(tripwire))
    # The file itself is sound: a loader that trusted everything would build it.
    assert type(sio.loads(sio.dumps(tripwire), trusted=[Tripwire])) is Tripwire
    assert Tripwire.REBUILT == ["Tripwire"]
    Tripwire.REBUILT.clear()
    with pytest.raises(ModelRejected) as caught:
        registry.load(SCOPE, NAME, version)
    assert caught.value.data["reason"] == "untrusted_types"
    assert Tripwire.REBUILT == []


def test_activating_an_untrusted_file_is_refused(
    registry: ModelRegistry, fitted: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _y = data
    registry.save(SCOPE, NAME, fitted, make_card())
    registry.activate(SCOPE, NAME, "v1")
    version = registry.save(SCOPE, NAME, fitted, make_card())
    replace_model_file(registry, version, sio.dumps(FunctionTransformer(func=os.getcwd).fit(X)))
    with pytest.raises(ModelRejected) as caught:
        registry.activate(SCOPE, NAME, version)
    assert caught.value.data["reason"] == "untrusted_types"
    assert registry.active_version(SCOPE, NAME) == "v1"


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04truncated"])
def test_a_garbage_model_file_is_unreadable(registry: ModelRegistry, fitted: Any, content: bytes) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    replace_model_file(registry, version, content)
    assert rejected_reason(registry, version) == "unreadable"


def test_a_truncated_model_file_is_unreadable(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    whole = (version_dir(registry, version) / MODEL_FILE).read_bytes()
    replace_model_file(registry, version, whole[: len(whole) // 2])
    assert rejected_reason(registry, version) == "unreadable"


def test_a_missing_model_file_is_unreadable(registry: ModelRegistry, fitted: Any) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    (version_dir(registry, version) / MODEL_FILE).unlink()
    assert rejected_reason(registry, version) == "unreadable"


@pytest.mark.parametrize("content", [b"not json {", b"", b"[1, 2, 3]", b'"a string"', b"\xff\xfe"])
def test_an_unreadable_card_is_refused(registry: ModelRegistry, fitted: Any, content: bytes) -> None:
    version = registry.save(SCOPE, NAME, fitted, make_card())
    (version_dir(registry, version) / CARD_FILE).write_bytes(content)
    assert rejected_reason(registry, version) == "card_unreadable"


def test_a_missing_version_directory_is_not_found(registry: ModelRegistry, fitted: Any) -> None:
    registry.save(SCOPE, NAME, fitted, make_card())
    registry.activate(SCOPE, NAME, "v1")
    for path in version_dir(registry, "v1").iterdir():
        path.unlink()
    version_dir(registry, "v1").rmdir()
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME)
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME, "v1")


def test_a_file_that_is_no_up_down_classifier_is_refused(
    registry: ModelRegistry, fitted: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    version = registry.save(SCOPE, NAME, StandardScaler().fit(X), make_card())
    assert rejected_reason(registry, version) == "not_a_classifier"
    three_classes = LogisticRegression().fit(X, np.arange(len(y)) % 3)
    version = registry.save(SCOPE, NAME, three_classes, make_card())
    assert rejected_reason(registry, version) == "not_a_classifier"


def test_a_classifier_with_text_labels_is_refused_as_not_up_down(
    registry: ModelRegistry, data: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = data
    text_labels = LogisticRegression().fit(X, np.where(y == 1, "up", "down"))
    version = registry.save(SCOPE, NAME, text_labels, make_card())
    # Every bad file is a ModelRejected, which the service catches; anything else ends its reload loop.
    assert rejected_reason(registry, version) == "not_a_classifier"


# -- names ------------------------------------------------------------------------------------

BAD_EVERYWHERE = ["../x", "a/b", "", "CBA.AX/..", "..", ".", "pooled/../x", "/etc", "x\n", None, 1, b"v1", []]


@pytest.mark.parametrize(
    "name", [*BAD_EVERYWHERE, "Logistic", "RANDOM_FOREST", "V1", "1model", "_x", "a" * 41]
)
def test_bad_model_names(name: object) -> None:
    with pytest.raises(InvalidParams) as caught:
        check_model_name(name)
    assert caught.value.data["field"] == "model_name"


@pytest.mark.parametrize("scope", [*BAD_EVERYWHERE, "cba.ax", "Pooled", "CBA.AX.X", "CBA.", "^", "CBA.AX\n"])
def test_bad_scopes(scope: object) -> None:
    with pytest.raises(InvalidParams) as caught:
        check_scope(scope)
    assert caught.value.data["field"] == "symbol"


@pytest.mark.parametrize("version", [*BAD_EVERYWHERE, "V1", "v0", "v01", "v", "1", "v1.0", "v-1", "v1\n"])
def test_bad_versions(version: object) -> None:
    with pytest.raises(InvalidParams) as caught:
        check_version(version)
    assert caught.value.data["field"] == "version"


@pytest.mark.parametrize("name", ["random_forest", "logistic", "gradient_boosting", "ridge", "v0", "m2"])
def test_good_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("scope", ["CBA.AX", "^AXJO", "pooled", "BHP", "V1"])
def test_good_scopes(scope: str) -> None:
    assert check_scope(scope) == scope


@pytest.mark.parametrize("version", ["v1", "v12", "v999999999"])
def test_good_versions(version: str) -> None:
    assert check_version(version) == version


def test_the_field_names_the_callers_parameter() -> None:
    with pytest.raises(InvalidParams) as caught:
        check_scope("../x", field="items[2].symbol")
    assert caught.value.data["field"] == "items[2].symbol"


@pytest.mark.parametrize(
    ("scope", "name", "version", "field"),
    [
        ("..", NAME, None, "symbol"),
        ("../../etc", NAME, "v1", "symbol"),
        ("pooled/../CBA.AX", NAME, "v1", "symbol"),
        (SCOPE, "../logistic", None, "model_name"),
        (SCOPE, "logistic/../../x", "v1", "model_name"),
        (SCOPE, NAME, "../v1", "version"),
        (SCOPE, NAME, "v1/../../../x", "version"),
    ],
)
def test_load_refuses_path_tricks_before_touching_the_filesystem(
    registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
    name: str,
    version: str | None,
    field: str,
) -> None:
    def touched(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the filesystem was touched")

    with monkeypatch.context() as patch:
        for method in ("open", "read_bytes", "stat", "exists", "is_dir", "iterdir"):
            patch.setattr(Path, method, touched)
        with pytest.raises(InvalidParams) as caught:
            registry.load(scope, name, version)
    assert caught.value.data["field"] == field


# -- the active pointer and stray entries -----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"v1", b"{}", b'{"version": "../v1"}', b'{"version": 1}', b'"v1"', b"[1]", b"\xff"],
)
def test_a_garbage_active_pointer_means_no_active_version(
    registry: ModelRegistry, fitted: Any, content: bytes
) -> None:
    registry.save(SCOPE, NAME, fitted, make_card())
    (registry.root / SCOPE / NAME / ACTIVE_FILE).write_bytes(content)
    assert registry.active_version(SCOPE, NAME) is None
    with pytest.raises(NotFound):
        registry.load(SCOPE, NAME)


def test_an_active_pointer_that_is_a_directory_means_none(registry: ModelRegistry, fitted: Any) -> None:
    registry.save(SCOPE, NAME, fitted, make_card())
    (registry.root / SCOPE / NAME / ACTIVE_FILE).mkdir()
    assert registry.active_version(SCOPE, NAME) is None


def test_no_registry_directory_means_nothing(registry: ModelRegistry) -> None:
    assert not registry.root.exists()
    assert registry.scopes() == []
    assert registry.model_names(SCOPE) == []
    assert registry.versions(SCOPE, NAME) == []
    assert registry.active_version(SCOPE, NAME) is None
    assert registry.active_stamp(SCOPE, NAME) is None


def test_scopes_and_model_names_ignore_stray_entries(registry: ModelRegistry) -> None:
    root = registry.root
    for directory in ("CBA.AX/logistic", "CBA.AX/ridge", "^AXJO", "pooled/random_forest"):
        (root / directory).mkdir(parents=True)
    for stray in ("cba.ax", "Pooled", "junk dir", ".hidden", "CBA.AX/Bad-Name", "CBA.AX/.incoming-1"):
        (root / stray).mkdir(parents=True)
    (root / "README").write_text("not a scope")
    (root / "WBC.AX").write_text("a file named like a scope")
    (root / "CBA.AX" / "notes").write_text("a file named like a model")
    assert registry.scopes() == ["CBA.AX", "^AXJO", "pooled"]
    assert registry.model_names("CBA.AX") == ["logistic", "ridge"]
    assert registry.model_names("pooled") == ["random_forest"]
    assert registry.model_names("^AXJO") == []
    with pytest.raises(InvalidParams):
        registry.model_names("../models")


# -- what the service reads out of a model ----------------------------------------------------


def test_ridge_votes_read_as_probabilities(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    ridge = build("ridge", seed=1).fit(X, y)
    votes = ridge.predict(X)
    assert set(votes.tolist()) == {0, 1}
    p = vote_probability(ridge, X, 0.7)
    assert np.allclose(p[votes == 1], 0.7)
    assert np.allclose(p[votes == 0], 0.3)
    assert np.array_equal(vote_probability(ridge, X, None), np.full(len(X), 0.5))
    # Worse than a coin counts as a coin; more than 1 is capped.
    assert np.array_equal(vote_probability(ridge, X, 0.4), np.full(len(X), 0.5))
    assert np.array_equal(vote_probability(ridge, X, 1.5), votes.astype(float))


def test_native_importance_of_a_linear_model(fitted: Any) -> None:
    importance = native_importance(fitted, FEATURE_NAMES)
    assert importance is not None
    assert list(importance) == list(FEATURE_NAMES)
    assert all(value >= 0 for value in importance.values())
    # The label follows the first feature: it has the largest coefficient.
    assert max(importance, key=importance.__getitem__) == FEATURE_NAMES[0]


def test_native_importance_of_a_forest(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    forest = build("random_forest", seed=1, jobs=1)
    forest.set_params(estimator__n_estimators=10)
    forest.fit(X, y)
    importance = native_importance(forest, FEATURE_NAMES)
    assert importance is not None
    assert len(importance) == 14
    assert all(value >= 0 for value in importance.values())
    assert max(importance, key=importance.__getitem__) == FEATURE_NAMES[0]


def test_gradient_boosting_has_no_native_importance(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    boosting = build("gradient_boosting", seed=1)
    boosting.set_params(estimator__max_iter=5)
    boosting.fit(X, y)
    assert native_importance(boosting, FEATURE_NAMES) is None
