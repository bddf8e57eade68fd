"""Import the bundle an MLflow registry alias points to into the BentoML model store.

The BentoML model is named like the registered model and versioned ``v<mlflow version>``
(``tx_trend:v3``); it holds ``model.onnx``, ``manifest.json`` and, when the manifest names
one (``native_booster``), the XGBoost member's booster for ``/v1/explain`` (logged by
training as an MLflow extra file, ``extra_files/xgb_booster.ubj``), and carries the labels
``mlflow_version`` and ``alias``. Importing a version that is already in the store reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bentoml._internal.models import Model as StoredModel
    from bentoml._internal.models import ModelStore

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
MANIFEST_KEY = "tx_manifest"


class BundleImportError(RuntimeError):
    """The registry entry is not a deployable bundle."""


class AliasNotSetError(LookupError):
    """The registered model exists but the alias points to no version."""


@dataclass(frozen=True)
class ImportedModel:
    """A bundle in the BentoML store: serve it with ``bentoml_tag``."""

    bentoml_tag: str
    mlflow_version: str
    manifest: dict[str, Any]
    created: bool = True  # False when an earlier import of this version was reused


def import_from_registry(
    tracking_uri: str,
    model_name: str,
    alias: str = "champion",
    *,
    bentoml_home: str | Path | None = None,
) -> ImportedModel:
    """Import the version ``alias`` points to into the BentoML store and return its tag.

    Args:
        tracking_uri: MLflow tracking and registry URI (e.g. ``sqlite:///.tx/mlflow.db``).
        model_name: registered model name.
        alias: registry alias to resolve.
        bentoml_home: BentoML home; default ``$BENTOML_HOME`` as set when called (even if
            BentoML was already used in this process), else ``~/bentoml``.

    Raises:
        AliasNotSetError: the registered model has no version with ``alias``.
        BundleImportError: the version has no ``model.onnx`` or no valid ``tx_manifest``,
            or the ONNX graph does not match the manifest.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = _model_store(bentoml_home)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in str(exc).lower():
            raise AliasNotSetError(f"{model_name} has no version with alias {alias!r}") from exc
        raise
    version = str(mv.version)

    existing = _find_imported(store, _bentoml_name(model_name), version)
    if existing is not None:
        manifest = json.loads(Path(existing.path_of(MANIFEST_FILE)).read_text())
        logger.info("%s@%s = v%s already imported as %s", model_name, alias, version, existing.tag)
        return ImportedModel(str(existing.tag), version, manifest, created=False)

    with tempfile.TemporaryDirectory(prefix="tx_import_") as tmp:
        download_uri = client.get_model_version_download_uri(model_name, version)
        onnx_bytes, manifest, booster = _download_bundle(
            download_uri, tracking_uri, f"{model_name} v{version}", Path(tmp)
        )
    _check_bundle(onnx_bytes, manifest)
    tag = _save(
        store, model_name, version, alias, onnx_bytes, manifest, source=mv.source, booster=booster
    )
    logger.info("imported %s@%s = v%s as %s", model_name, alias, version, tag)
    return ImportedModel(tag, version, manifest, created=True)


def get_stored(tag: str, *, bentoml_home: str | Path | None = None) -> StoredModel:
    """The BentoML model ``tag`` from the store under ``bentoml_home`` (default as in
    ``import_from_registry``)."""
    return _model_store(bentoml_home).get(tag)


def _bentoml_name(model_name: str) -> str:
    # BentoML tag names are lowercase [a-z0-9_.-].
    return model_name.lower()


def _model_store(bentoml_home: str | Path | None) -> ModelStore:
    # BentoML resolves BENTOML_HOME once per process; an explicit store honours the value
    # the caller has set now.
    from bentoml._internal.models import ModelStore

    home = Path(bentoml_home or os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    models = home.expanduser().resolve() / "models"
    models.mkdir(parents=True, exist_ok=True)
    return ModelStore(models)


def _find_imported(store: ModelStore, name: str, version: str) -> StoredModel | None:
    from bentoml.exceptions import NotFound

    try:
        candidates = store.list(name)
    except NotFound:
        return None
    for model in candidates:
        if (
            model.info.labels.get("mlflow_version") == version
            and Path(model.path_of(ONNX_FILE)).is_file()
        ):
            return model
    return None


def _download_bundle(
    download_uri: str, tracking_uri: str, what: str, dst: Path
) -> tuple[bytes, dict[str, Any], bytes | None]:
    # The artifact location itself, not `models:/name/version`: MLflow 3.17 resolves the
    # latter with the process-global registry URI, ignoring the one passed in.
    import mlflow
    from mlflow.models import Model

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=download_uri, dst_path=str(dst), tracking_uri=tracking_uri
        )
    )
    mlmodel_path = local / "MLmodel"
    if not mlmodel_path.is_file():
        raise BundleImportError(f"{what} has no MLmodel file")
    mlmodel = Model.load(str(mlmodel_path))
    manifest = (mlmodel.metadata or {}).get(MANIFEST_KEY)
    if not isinstance(manifest, dict):
        raise BundleImportError(f"{what} has no {MANIFEST_KEY!r} in its metadata")
    onnx_file = (mlmodel.flavors.get("onnx") or {}).get("data", ONNX_FILE)
    onnx_path = local / onnx_file
    if not onnx_path.is_file():
        raise BundleImportError(f"{what} has no ONNX file {onnx_file!r}")
    booster: bytes | None = None
    name = manifest.get("native_booster")
    if isinstance(name, str) and name:
        found = [p for p in (local / "extra_files" / name, local / name) if p.is_file()]
        if not found:
            raise BundleImportError(f"{what}: manifest names {name!r}, the model has no such file")
        booster = found[0].read_bytes()
    return onnx_path.read_bytes(), manifest, booster


def _check_bundle(onnx_bytes: bytes, manifest: dict[str, Any]) -> None:
    from serving.inference import BundleMismatchError, check_session, open_session
    from serving.preprocess import ManifestError, bundle_spec

    try:
        check_session(open_session(onnx_bytes), bundle_spec(manifest))
    except (ManifestError, BundleMismatchError) as exc:
        raise BundleImportError(str(exc)) from exc


def _save(
    store: ModelStore,
    model_name: str,
    version: str,
    alias: str,
    onnx_bytes: bytes,
    manifest: dict[str, Any],
    *,
    source: str | None,
    booster: bytes | None = None,
) -> str:
    import bentoml
    from bentoml import Tag

    metadata = {
        "mlflow_model_name": model_name,
        "mlflow_version": version,
        "mlflow_source": source or "",
        "feature_service": str(manifest.get("feature_service", "")),
        "n_features": len(manifest.get("features", [])),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }
    labels = {"mlflow_version": version, "alias": alias}
    tag = Tag(_bentoml_name(model_name), f"v{version}")
    with bentoml.models.create(tag, labels=labels, metadata=metadata, _model_store=store) as model:
        Path(model.path_of(ONNX_FILE)).write_bytes(onnx_bytes)
        Path(model.path_of(MANIFEST_FILE)).write_text(
            json.dumps(manifest, indent=2, sort_keys=True)
        )
        if booster is not None:
            Path(model.path_of(str(manifest["native_booster"]))).write_bytes(booster)
        saved = str(model.tag)
    return saved


def wait_for_alias(
    tracking_uri: str,
    model_name: str,
    alias: str = "champion",
    *,
    poll_s: float = 3.0,
    bentoml_home: str | Path | None = None,
) -> ImportedModel:
    """:func:`import_from_registry`, retried every ``poll_s`` seconds while the model or its
    alias does not exist yet or the registry does not answer (a stack starting from
    nothing: serving comes up before training has promoted anything). A bundle that fails
    to import still raises."""
    import time

    from mlflow.exceptions import MlflowException

    said = ""
    while True:
        try:
            return import_from_registry(tracking_uri, model_name, alias, bentoml_home=bentoml_home)
        except BundleImportError:
            raise
        except (AliasNotSetError, MlflowException, OSError) as exc:
            why = f"waiting for {model_name}@{alias} in {tracking_uri}: {type(exc).__name__}"
            if why != said:
                logger.info(why)
                said = why
        time.sleep(poll_s)
