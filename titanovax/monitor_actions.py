"""What the monitoring loop does about a breach, so a drifting market or a model that trades
below its backtest does not keep trading at full size until someone reads a dashboard.

:func:`apply` is the ``actions`` hook of :func:`titanovax.monitor.run`. For each
``breach`` of a check named in ``TX_MONITOR_ACTION_CHECKS`` (default ``drift`` and
``live_vs_expected``) it runs every enabled action once:

- **reduce** — ``POST /api/reduce`` on the engine's authenticated control API (bearer
  ``TX_ENGINE_TOKEN``, actor ``monitor``): the engine trades at reduced size (state
  ``REDUCING``, reason ``monitor_reduce``) until an operator resumes it;
- **retrain** — an asset event on the features asset through Airflow's REST API
  (``POST /api/v2/assets/events``): the scheduler starts ``train_and_promote``, which is
  scheduled on that asset, exactly as when ``market_data`` updates it.

Every action notifies through :func:`titanovax.notify.notify` (apprise) whether it worked or
not, and is audited: one row per (action, breach) in the table ``monitor_actions`` (next to
the monitor results), plus a log line. A **cool-down** (``TX_MONITOR_ACTION_COOLDOWN_HOURS``)
keeps the same breach (action, check, subject) from re-triggering on every hourly run: while
it holds, the row says ``cooldown`` and nothing is called. Only a ``done`` action starts a
cool-down, so an engine that was unreachable is tried again on the next run. A failing
action (engine down, Airflow refusing, audit database gone) is recorded, logged and
notified; :func:`apply` never raises, so the monitoring run itself always completes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from titanovax.airflow_tasks import FEATURES_ASSET_URI
from training.monitor.result import CheckResult

log = logging.getLogger(__name__)

ACTIONS = ("reduce", "retrain")
TABLE = "monitor_actions"


class MonitorActionSettings(BaseSettings):
    """What the monitoring loop does on a breach (documented in ``.env.example``)."""

    model_config = SettingsConfigDict(
        env_prefix="TX_MONITOR_ACTION_", env_file=None, extra="ignore", populate_by_name=True
    )

    checks: Annotated[list[str], NoDecode] = Field(
        default=["drift", "live_vs_expected"],
        description="Checks whose `breach` triggers the actions (comma-separated).",
    )
    reduce: bool = Field(
        default=True, description="On a breach, put the engine into REDUCING (POST /api/reduce)."
    )
    retrain: bool = Field(
        default=True,
        description="On a breach, emit an event on the features asset so Airflow runs "
        "train_and_promote (POST /api/v2/assets/events).",
    )
    cooldown_hours: float = Field(
        default=6.0,
        ge=0,
        description="After an action was done for a breach (action, check, subject), the same "
        "breach does not trigger it again for this long (0: every run).",
    )
    engine_url: str | None = Field(
        default=None,
        description="Engine control API; default http://127.0.0.1:<TX_ENGINE_CONTROL_PORT>.",
    )
    engine_token: SecretStr | None = Field(
        default=None,
        alias="TX_ENGINE_TOKEN",
        description="The engine's control token (TX_ENGINE_TOKEN, shared with the engine).",
    )
    engine_control_port: int = Field(default=8765, alias="TX_ENGINE_CONTROL_PORT")
    airflow_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Airflow's api-server (the REST API /api/v2 lives under it).",
    )
    airflow_token: SecretStr | None = Field(
        default=None,
        description="Bearer JWT for Airflow's REST API; unset when the auth manager lets "
        "every request in (the stack's simple auth manager with all admins).",
    )
    asset_uri: str = Field(
        default=FEATURES_ASSET_URI,
        description="URI of the asset train_and_promote is scheduled on.",
    )
    db_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the audit table monitor_actions; default the monitor "
        "results' database (TX_MONITOR_DB_URL, sqlite:///<TX_HOME>/monitoring.db).",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout of each action.")

    @field_validator("checks", mode="before")
    @classmethod
    def _split_checks(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p for p in v.replace(",", " ").split() if p]
        bad = [c for c in v if not str(c).replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"not a check name: {bad} (e.g. drift,live_vs_expected)")
        return v

    @property
    def control_url(self) -> str:
        return (self.engine_url or f"http://127.0.0.1:{self.engine_control_port}").rstrip("/")


# --- the audit table --------------------------------------------------------------------------


def default_db_url(ctx: Any = None) -> str:
    """Next to the monitor results: the context's store URL when it has one, else the
    monitor store of the settings (``TX_MONITOR_DB_URL``, default
    ``sqlite:///<TX_HOME>/monitoring.db``), else ``TX_JOURNAL_URL``, else a SQLite file."""
    import os

    from titanovax.settings import PlatformSettings

    for attr in ("db_url", "store_url", "monitor_db"):
        v = getattr(ctx, attr, None)
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        if isinstance(v, str) and v:
            return _sqlalchemy_url(v)
    ps = getattr(ctx, "settings", None) or PlatformSettings()
    monitor_db = getattr(ps, "monitor_db", None)
    if isinstance(monitor_db, str) and monitor_db:
        return _sqlalchemy_url(monitor_db)
    if os.environ.get("TX_JOURNAL_URL"):
        return _sqlalchemy_url(os.environ["TX_JOURNAL_URL"])
    return f"sqlite:///{ps.home / 'monitoring.db'}"


def _sqlalchemy_url(url: str) -> str:
    """``postgresql://`` (libpq form the journal uses) → SQLAlchemy with psycopg 3."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class AuditStore:
    """Rows of ``monitor_actions``: what was done (or not) about which breach, and when."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.String(40), nullable=False, index=True),  # ISO-8601 UTC
            sa.Column("action", sa.String(20), nullable=False),
            sa.Column("check_name", sa.String(60), nullable=False),
            sa.Column("subject", sa.String(200), nullable=False),
            sa.Column("status", sa.String(20), nullable=False),  # done | failed | cooldown
            sa.Column("detail", sa.Text, nullable=False),
            sa.Column("evidence", sa.Text, nullable=False),  # JSON
            sa.Column("notified", sa.Boolean, nullable=False),
            sa.Column("run_id", sa.String(100)),
        )
        meta.create_all(self.engine)

    def last_done(self, action: str, check: str, subject: str) -> datetime | None:
        import sqlalchemy as sa

        t = self.table
        q = sa.select(sa.func.max(t.c.at)).where(
            t.c.action == action,
            t.c.check_name == check,
            t.c.subject == subject,
            t.c.status == "done",
        )
        with self.engine.connect() as c:
            v = c.execute(q).scalar()
        return datetime.fromisoformat(v) if v else None

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.engine.begin() as c:
            c.execute(
                self.table.insert(),
                [{**r, "evidence": json.dumps(r["evidence"], default=str)} for r in rows],
            )

    def rows(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as c:
            got = c.execute(sa.select(t).order_by(t.c.id.desc()).limit(limit)).mappings().all()
        return [{**r, "evidence": json.loads(r["evidence"])} for r in got]

    def close(self) -> None:
        self.engine.dispose()


# --- the actions ------------------------------------------------------------------------------


class ActionFailed(RuntimeError):
    """An action could not be done; the message says what answered (or did not)."""


def _reason(breaches: list[CheckResult]) -> str:
    parts = [f"{b.check} {b.subject}: {b.detail}" for b in breaches]
    text = "monitor breach: " + "; ".join(parts)
    return text if len(text) <= 500 else text[:497] + "..."


def reduce_engine(s: MonitorActionSettings, breaches: list[CheckResult]) -> dict[str, Any]:
    """``POST /api/reduce``; the engine's status answer (its state must be REDUCING)."""
    if s.engine_token is None or not s.engine_token.get_secret_value():
        raise ActionFailed(
            "TX_ENGINE_TOKEN is not set: the control API refuses unauthenticated calls"
        )
    url = f"{s.control_url}/api/reduce"
    try:
        r = httpx.post(
            url,
            json={"reason": _reason(breaches)},
            headers={
                "Authorization": f"Bearer {s.engine_token.get_secret_value()}",
                "X-TX-Actor": "monitor",
            },
            timeout=s.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ActionFailed(
            f"engine at {s.control_url} unreachable: {type(exc).__name__}: {exc}"
        ) from exc
    if r.status_code != 200:
        raise ActionFailed(f"{url}: HTTP {r.status_code} {r.text[:300]}")
    status = r.json()
    # C3: the answer is GET /api/status's JSON (trading_state); kill/resume answer "state"
    state = status.get("trading_state") or status.get("state")
    if state != "REDUCING":
        raise ActionFailed(f"{url} answered 200 but the engine is {state}, not REDUCING")
    return {"engine_state": state, "engine_url": s.control_url}


def _airflow_headers(s: MonitorActionSettings) -> dict[str, str]:
    if s.airflow_token is not None and s.airflow_token.get_secret_value():
        return {"Authorization": f"Bearer {s.airflow_token.get_secret_value()}"}
    return {}


def emit_retrain_event(s: MonitorActionSettings, breaches: list[CheckResult]) -> dict[str, Any]:
    """An event on the asset ``train_and_promote`` is scheduled on, through Airflow's REST
    API; the event's id and the asset's."""
    api = s.airflow_url.rstrip("/") + "/api/v2"
    headers = _airflow_headers(s)
    try:
        r = httpx.get(
            f"{api}/assets",
            params={"uri_pattern": s.asset_uri, "limit": 100},
            headers=headers,
            timeout=s.timeout_s,
        )
        if r.status_code != 200:
            raise ActionFailed(f"{api}/assets: HTTP {r.status_code} {r.text[:300]}")
        ids = [a["id"] for a in r.json().get("assets", []) if a.get("uri") == s.asset_uri]
        if not ids:
            raise ActionFailed(
                f"Airflow knows no asset {s.asset_uri!r} (is the train_and_promote DAG parsed?)"
            )
        extra = {
            "source": "monitor",
            "reason": _reason(breaches),
            "breaches": [{"check": b.check, "subject": b.subject} for b in breaches],
        }
        e = httpx.post(
            f"{api}/assets/events",
            json={"asset_id": ids[0], "extra": extra},
            headers=headers,
            timeout=s.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise ActionFailed(
            f"Airflow at {s.airflow_url} unreachable: {type(exc).__name__}: {exc}"
        ) from exc
    if e.status_code != 200:
        raise ActionFailed(f"{api}/assets/events: HTTP {e.status_code} {e.text[:300]}")
    return {"asset_id": ids[0], "asset_event_id": e.json().get("id"), "airflow_url": s.airflow_url}


Runner = Callable[[MonitorActionSettings, list[CheckResult]], dict[str, Any]]
RUNNERS: dict[str, Runner] = {"reduce": reduce_engine, "retrain": emit_retrain_event}
TITLES = {
    "reduce": ("engine set to REDUCING", "could not set the engine to REDUCING"),
    "retrain": ("retraining requested (train_and_promote)", "could not request retraining"),
}


@dataclass
class _Outcome:
    status: str
    detail: str
    evidence: dict[str, Any]


def apply(
    ctx: Any,
    results: list[CheckResult],
    *,
    settings: MonitorActionSettings | None = None,
    notify: Callable[[str, str], bool] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Act on the breaches in ``results`` (see the module docstring); one dict per action
    considered: ``action``, ``status`` (done/failed/cooldown), ``breaches``, ``detail``,
    ``notified``. Never raises."""
    try:
        s = settings or MonitorActionSettings()
    except Exception as exc:
        log.error("monitor actions: bad settings, nothing done: %s", exc)
        _notify(notify, "TitanovaX monitor: actions not configured", str(exc))
        return [{"action": "settings", "status": "failed", "detail": str(exc), "breaches": []}]
    breaches = [r for r in results if r.status == "breach" and r.check in s.checks]
    if not breaches:
        return []
    ctx_now = getattr(ctx, "now", None)
    at = (
        now or (ctx_now if isinstance(ctx_now, datetime) else None) or datetime.now(UTC)
    ).astimezone(UTC)
    run_id = str(getattr(ctx, "run_id", "") or "") or None
    try:
        db_url = s.db_url.get_secret_value() if s.db_url else default_db_url(ctx)
        store: AuditStore | None = AuditStore(db_url)
    except Exception as exc:
        log.error("monitor actions: audit store unavailable (%s); acting without cool-down", exc)
        _notify(notify, "TitanovaX monitor: audit store unavailable", str(exc))
        store = None

    out: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for action in ACTIONS:
        if not getattr(s, action):
            continue
        due, cooling = _split_cooldown(store, action, breaches, s, at)
        for b, last in cooling:
            rows.append(
                _row(
                    at,
                    action,
                    b,
                    "cooldown",
                    f"done at {last.isoformat()}; cool-down {s.cooldown_hours:g} h",
                    {},
                    False,
                    run_id,
                )
            )
        if cooling:
            log.info(
                "monitor action %s: %d breach(es) in cool-down (%s)",
                action,
                len(cooling),
                ", ".join(f"{b.check} {b.subject}" for b, _ in cooling),
            )
        if not due:
            out.append(
                {
                    "action": action,
                    "status": "cooldown",
                    "breaches": [f"{b.check} {b.subject}" for b, _ in cooling],
                    "detail": f"cool-down of {s.cooldown_hours:g} h",
                    "notified": False,
                }
            )
            continue
        outcome = _run(action, s, due)
        ok_title, fail_title = TITLES[action]
        title = f"TitanovaX monitor: {ok_title if outcome.status == 'done' else fail_title}"
        body = (
            f"{outcome.detail}\n"
            + "\n".join(f"- {b.check} {b.subject}: {b.detail}" for b in due)
            + (f"\nmonitor run {run_id}" if run_id else "")
        )
        notified = _notify(notify, title, body)
        (log.warning if outcome.status == "done" else log.error)(
            "monitor action %s %s: %s", action, outcome.status, outcome.detail
        )
        for b in due:
            rows.append(
                _row(
                    at,
                    action,
                    b,
                    outcome.status,
                    outcome.detail,
                    outcome.evidence,
                    notified,
                    run_id,
                )
            )
        out.append(
            {
                "action": action,
                "status": outcome.status,
                "breaches": [f"{b.check} {b.subject}" for b in due],
                "detail": outcome.detail,
                "evidence": outcome.evidence,
                "notified": notified,
            }
        )
    if store is not None:
        try:
            store.add(rows)
        except Exception as exc:
            log.error("monitor actions: audit rows not written: %s", exc)
            _notify(notify, "TitanovaX monitor: audit rows not written", str(exc))
        finally:
            store.close()
    return out


def _split_cooldown(
    store: AuditStore | None,
    action: str,
    breaches: list[CheckResult],
    s: MonitorActionSettings,
    at: datetime,
) -> tuple[list[CheckResult], list[tuple[CheckResult, datetime]]]:
    due: list[CheckResult] = []
    cooling: list[tuple[CheckResult, datetime]] = []
    window = timedelta(hours=s.cooldown_hours)
    for b in breaches:
        last = None
        if store is not None and window > timedelta(0):
            try:
                last = store.last_done(action, b.check, b.subject)
            except Exception as exc:
                log.error("monitor actions: cool-down lookup failed (%s): acting", exc)
        if last is not None and at - last < window:
            cooling.append((b, last))
        else:
            due.append(b)
    return due, cooling


def _run(action: str, s: MonitorActionSettings, due: list[CheckResult]) -> _Outcome:
    try:
        evidence = RUNNERS[action](s, due)
    except ActionFailed as exc:
        return _Outcome("failed", str(exc), {})
    except Exception as exc:  # an action never crashes the monitoring run
        log.exception("monitor action %s crashed", action)
        return _Outcome("failed", f"{type(exc).__name__}: {exc}", {})
    if action == "reduce":
        detail = f"engine {evidence['engine_url']} is REDUCING"
    else:
        detail = (
            f"asset event {evidence.get('asset_event_id')} on {s.asset_uri}: "
            "Airflow schedules train_and_promote"
        )
    return _Outcome("done", detail, evidence)


def _row(
    at: datetime,
    action: str,
    b: CheckResult,
    status: str,
    detail: str,
    evidence: dict[str, Any],
    notified: bool,
    run_id: str | None,
) -> dict[str, Any]:
    return {
        "at": at.isoformat(),
        "action": action,
        "check_name": b.check,
        "subject": b.subject[:200],
        "status": status,
        "detail": detail,
        "evidence": {**evidence, "breach": {"detail": b.detail, "metrics": b.metrics}},
        "notified": notified,
        "run_id": run_id,
    }


def _notify(send: Callable[[str, str], bool] | None, title: str, body: str) -> bool:
    if send is None:
        from titanovax.notify import notify as default_send

        send = default_send
    try:
        return bool(send(title, body))
    except Exception as exc:  # a notifier failing must not stop the other actions
        log.error("monitor actions: notification %r failed: %s", title, exc)
        return False
