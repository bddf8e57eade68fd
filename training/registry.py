"""Registry aliases with an audit history: every move of ``champion`` / ``previous`` /
``challenger`` is written, before and after, with who, when, why and the evidence.

The history is an append-only JSON Lines file, ``$TX_HOME/registry/alias_audit.jsonl`` (one
object per move, never rewritten, naming its model and registry), mirrored as a tag ``audit.<utc time>`` on the model version
the move concerns so the MLflow UI shows it too. ``tx models history`` prints it and
``tx models rollback`` moves ``champion`` back to ``previous`` (audited like any move).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from titanovax.settings import PlatformSettings

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)


class RollbackError(RuntimeError):
    """There is no ``previous`` version to roll back to."""


def audit_path(settings: PlatformSettings) -> Path:
    return settings.home / "registry" / "alias_audit.jsonl"


def client_for(settings: PlatformSettings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def current_aliases(client: Any, model_name: str) -> dict[str, str]:
    """alias → version for the aliases that are set."""
    from mlflow.exceptions import MlflowException

    out: dict[str, str] = {}
    try:
        rm = client.get_registered_model(model_name)
    except MlflowException:
        return out
    for alias, version in (getattr(rm, "aliases", None) or {}).items():
        if alias in ALIASES:
            out[alias] = str(version)
    return out


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{os.uname().nodename}"


def move_aliases(
    settings: PlatformSettings,
    moves: dict[str, str | None],
    *,
    action: str,
    version: str,
    evidence: dict[str, Any],
    actor: str | None = None,
) -> dict[str, Any]:
    """Apply ``moves`` (alias → version, or ``None`` to delete) and append the audit record."""
    client = client_for(settings)
    name = settings.model_name
    before = current_aliases(client, name)
    for alias, v in moves.items():
        if v is None:
            if alias in before:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(v))
    after = current_aliases(client, name)
    now = datetime.now(UTC)
    record = {
        "time": now.isoformat(),
        "actor": actor or default_actor(),
        "model_name": name,
        "registry": settings.tracking_uri,
        "action": action,
        "version": str(version),
        "before": before,
        "after": after,
        "evidence": evidence,
    }
    path = audit_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        summary = {k: record[k] for k in ("action", "actor", "before", "after")}
        client.set_model_version_tag(
            name, str(version), f"audit.{now:%Y%m%dT%H%M%S%f}", json.dumps(summary)[:4900]
        )
    except Exception as exc:  # the JSONL line is the record of truth; the tag is a convenience
        log.warning("could not tag %s v%s with the audit record: %s", name, version, exc)
    log.info("%s %s v%s: aliases %s → %s", action, name, version, before, after)
    return record


def history(settings: PlatformSettings, limit: int | None = None) -> list[dict[str, Any]]:
    """Audit records, oldest first (the last ``limit`` when given)."""
    path = audit_path(settings)
    if not path.exists():
        return []
    rows = [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    # one TX_HOME may have seen several registries (TX_MLFLOW_TRACKING_URI): only this one's moves
    rows = [
        r
        for r in rows
        if r.get("model_name") == settings.model_name
        and r.get("registry", settings.tracking_uri) == settings.tracking_uri
    ]
    return rows[-limit:] if limit else rows


def rollback(
    settings: PlatformSettings, *, actor: str | None = None, reason: str = "manual rollback"
) -> dict[str, Any]:
    """``champion`` ← ``previous``; ``previous`` ← the demoted champion (so a second rollback
    undoes the first). Audited."""
    client = client_for(settings)
    aliases = current_aliases(client, settings.model_name)
    if PREVIOUS not in aliases:
        raise RollbackError(f"{settings.model_name} has no '{PREVIOUS}' version to roll back to")
    target, demoted = aliases[PREVIOUS], aliases.get(CHAMPION)
    moves: dict[str, str | None] = {CHAMPION: target, PREVIOUS: demoted}
    return move_aliases(
        settings,
        moves,
        action="rollback",
        version=target,
        evidence={"reason": reason, "demoted": demoted},
        actor=actor,
    )


def notify_serving(settings: PlatformSettings) -> str:
    """Ask serving to reload its aliases (``POST {TX_SERVING_URL}/v1/admin/reload``).

    Never raises: an unset URL or an unreachable server is logged and reported."""
    url = settings.serving_url
    if not url:
        msg = "TX_SERVING_URL not set: serving reload skipped"
        log.info(msg)
        return msg
    import httpx

    headers = (
        {"Authorization": f"Bearer {settings.serving_token}"} if settings.serving_token else {}
    )
    try:
        r = httpx.post(f"{url.rstrip('/')}/v1/admin/reload", headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        msg = f"serving at {url} not reachable, reload skipped: {exc}"
        log.warning(msg)
        return msg
    msg = f"serving reload: HTTP {r.status_code} {r.text[:200]}"
    (log.info if r.is_success else log.warning)(msg)
    return msg


GATE_HEADING = "### Promotion gate"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def describe_version(manifest: dict[str, Any], version: str) -> str:
    """The model version's description (Markdown, shown in the MLflow UI): what was trained
    on which data, its test metrics, and the gate's verdict once it has run."""
    m = manifest.get("metrics") or {}
    keys = (
        "test_net_return",
        "test_sharpe",
        "test_sharpe_ci_low",
        "test_sharpe_ci_high",
        "test_max_drawdown",
        "test_accuracy",
        "baseline_flat_net_return",
    )
    shown = ", ".join(f"{k.removeprefix('test_')} {_fmt(m[k])}" for k in keys if k in m)
    return "\n".join(
        [
            f"**{manifest.get('model_name', '')} v{version}**: {manifest.get('experiment')} "
            f"({manifest.get('family')}) on feature service `{manifest.get('feature_service')}`, "
            f"{manifest.get('timeframe')} {', '.join(manifest.get('symbols', []))}.",
            "",
            f"- trained on {manifest['train_range'][0][:16]} → {manifest['train_range'][1][:16]}, "
            f"tested on {manifest['test_range'][0][:16]} → {manifest['test_range'][1][:16]} (UTC)",
            f"- lake snapshot `{str(manifest.get('lake_snapshot', ''))[:16]}`, "
            f"code `{str(manifest.get('git_commit', ''))[:12]}`",
            f"- test, after costs: {shown}",
            f"- ONNX parity {_fmt(manifest.get('parity_max_abs_diff'))}, single-row p50 "
            f"{_fmt(manifest.get('onnx_latency_us'))} µs, sha256 "
            f"`{str(manifest.get('bundle_sha256', ''))[:16]}`",
            "",
            GATE_HEADING,
            f"Not run yet: `tx models promote {version}`.",
        ]
    )


def describe_gate(decision: dict[str, Any], when: datetime | None = None) -> str:
    """The gate section of a version description: the verdict, its reason, the evidence."""
    ev = decision.get("evidence") or {}
    verdict = "**promoted to champion**" if decision.get("promoted") else "**refused**"
    champ = decision.get("previous_champion")
    lines = [
        GATE_HEADING,
        f"{(when or datetime.now(UTC)):%Y-%m-%d %H:%M} UTC: {verdict}: {decision.get('reason')}",
        "",
        f"- compared with: {'champion v' + str(champ) if champ else 'no champion (always-flat baseline)'}",
    ]
    for key in (
        "challenger_net_return",
        "champion_net_return",
        "challenger_max_drawdown",
        "champion_max_drawdown",
        "sharpe_diff",
        "sharpe_diff_ci",
        "dm_p_value",
        "window_bars",
        "aligned_bars",
        "parity_max_abs_diff",
        "window",
    ):
        if ev.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: {_fmt(ev[key])}")
    return "\n".join(lines)


def record_gate_in_description(
    settings: PlatformSettings, version: str, decision: dict[str, Any]
) -> None:
    """Replace the gate section of the version's description with the decision."""
    client = client_for(settings)
    mv = client.get_model_version(settings.model_name, str(version))
    head = (mv.description or "").split(GATE_HEADING)[0].rstrip()
    text = f"{head}\n\n{describe_gate(decision)}" if head else describe_gate(decision)
    client.update_model_version(settings.model_name, str(version), description=text)


class BundleError(RuntimeError):
    """The registry entry cannot be pulled as a deployable bundle."""


def resolve_version(settings: PlatformSettings, ref: str) -> str:
    """``ref`` is an alias (``champion``) or a version number; returns the version."""
    from mlflow.exceptions import MlflowException

    client = client_for(settings)
    name = settings.model_name
    if ref.isdigit():
        client.get_model_version(name, ref)  # raises RESOURCE_DOES_NOT_EXIST when absent
        return ref
    try:
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException as exc:
        set_ = current_aliases(client, name)
        known = ", ".join(f"{a}=v{v}" for a, v in set_.items()) or "none set"
        raise BundleError(f"{name} has no version with alias {ref!r} (aliases: {known})") from exc


def pull_bundle(settings: PlatformSettings, ref: str, out_dir: Path) -> dict[str, Any]:
    """Fetch the bundle of alias or version ``ref`` into ``out_dir``: ``model.onnx``,
    ``manifest.json`` (the ``tx_manifest`` plus ``model_version``) and, when the version has
    one, the training ``reference_sample.parquet`` — the folder the engine reads
    (``TX_ENGINE_BUNDLE_DIR``). The ONNX bytes must match the manifest's sha256;
    the files are written to a temp folder and moved in place, so a half pull never shows."""
    import hashlib
    import shutil
    import tempfile

    import mlflow
    from mlflow.models import Model

    client = client_for(settings)
    name = settings.model_name
    version = resolve_version(settings, ref)
    uri = client.get_model_version_download_uri(name, version)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tx_pull_", dir=out_dir.parent) as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(Path(tmp) / "dl"), tracking_uri=settings.tracking_uri
            )
        )
        mlmodel = Model.load(str(local / "MLmodel"))
        manifest = (mlmodel.metadata or {}).get("tx_manifest")
        if not isinstance(manifest, dict):
            raise BundleError(f"{name} v{version} has no tx_manifest in its MLmodel metadata")
        onnx_file = (mlmodel.flavors.get("onnx") or {}).get("data", "model.onnx")
        onnx_bytes = (local / onnx_file).read_bytes()
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if manifest.get("bundle_sha256") and manifest["bundle_sha256"] != digest:
            raise BundleError(
                f"{name} v{version}: model.onnx sha256 {digest} != manifest {manifest['bundle_sha256']}"
            )
        stage = Path(tmp) / "bundle"
        stage.mkdir()
        (stage / "model.onnx").write_bytes(onnx_bytes)
        sample = manifest.get("reference_sample")  # contract C1; older bundles have none
        if isinstance(sample, str) and (local / sample).is_file():
            shutil.copyfile(local / sample, stage / sample)
        (stage / "manifest.json").write_text(
            json.dumps({**manifest, "model_version": version}, indent=2, sort_keys=True)
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    log.info("pulled %s v%s (%s) into %s", name, version, ref, out_dir)
    return {
        "model_name": name,
        "ref": ref,
        "version": version,
        "dir": str(out_dir),
        "bundle_sha256": digest,
        "features": len(manifest.get("features", [])),
        "feature_service": manifest.get("feature_service"),
    }
