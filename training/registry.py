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
