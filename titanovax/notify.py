"""The notifier: alerts reach a person through apprise (Telegram, Slack, e-mail, any webhook).

- :func:`notify` sends one message to every URL of ``TX_NOTIFY_URLS`` (the DAGs'
  ``on_failure_callback`` calls it);
- ``tx notify serve`` runs :class:`NotifierServer`, an HTTP endpoint for Alertmanager's
  webhook (``POST /alertmanager``): each notification becomes one readable message (what
  fires, where, since when, what to read) forwarded through apprise; ``GET /healthz``.

``TX_NOTIFY_URLS`` holds apprise URLs separated by commas or spaces, e.g.
``tgram://<bot_token>/<chat_id>``, ``slack://<tokenA>/<tokenB>/<tokenC>/#alerts``,
``mailtos://user:pass@example.com?to=ops@example.com``, ``json://hooks.example.com/tx``.
They carry credentials, so the setting is a secret with no default.

The HTTP endpoint is the standard library's ``http.server`` (as the engine's control API):
one POST per alert group, no framework needed, and it starts in milliseconds.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class NotifySettings(BaseSettings):
    """Where notifications go and where the Alertmanager webhook listens."""

    model_config = SettingsConfigDict(env_prefix="TX_NOTIFY_", extra="ignore")

    urls: SecretStr
    host: str = "127.0.0.1"
    port: int = 9095


class NotConfigured(RuntimeError):
    """No apprise URL is configured (``TX_NOTIFY_URLS``)."""


class Notifier:
    """Every apprise URL of one configuration."""

    def __init__(self, urls: str) -> None:
        import apprise

        self.apprise = apprise.Apprise()
        if not urls.strip() or not self.apprise.add(urls):
            raise NotConfigured(
                "TX_NOTIFY_URLS holds no valid apprise URL (e.g. tgram://TOKEN/CHAT_ID, "
                "slack://..., mailtos://..., json://host/path)"
            )

    @classmethod
    def from_settings(cls, settings: NotifySettings | None = None) -> Notifier:
        """The notifier of ``TX_NOTIFY_URLS``."""
        return cls((settings or NotifySettings()).urls.get_secret_value())  # type: ignore[call-arg]

    def send(self, title: str, body: str, *, failure: bool = True) -> bool:
        """Send to every URL; True when all accepted it."""
        import apprise

        kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.SUCCESS
        return bool(self.apprise.notify(title=title, body=body, notify_type=kind))


def notify(title: str, body: str) -> bool:
    """Send ``title``/``body`` to every ``TX_NOTIFY_URLS`` target; False (and a warning)
    when nothing is configured or a target refused: a callback never raises."""
    try:
        notifier = Notifier.from_settings()
    except Exception as exc:  # pydantic's missing setting, or no valid URL
        log.warning("notification not sent (%s): %s", title, exc)
        return False
    ok = notifier.send(title, body)
    if not ok:
        log.warning("notification %r: at least one target refused it", title)
    return ok


def dag_failure_callback(context: dict[str, Any]) -> None:
    """Airflow ``on_failure_callback``: one message naming the DAG, task, run and error."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", "?")
    err = context.get("exception")
    notify(
        f"Airflow: {dag_id}.{task_id} failed",
        f"DAG {dag_id}, task {task_id}, run {run_id}\n{type(err).__name__ if err else 'error'}: {err}",
    )


def format_alertmanager(payload: dict[str, Any]) -> tuple[str, str]:
    """A title and a body a person can act on, from Alertmanager's webhook JSON (version 4)."""
    alerts = payload.get("alerts") or []
    status = str(payload.get("status", "firing")).upper()
    common = payload.get("commonLabels") or {}
    name = common.get("alertname") or ", ".join(
        sorted({a.get("labels", {}).get("alertname", "?") for a in alerts})
    )
    sev = common.get("severity")
    title = f"[{status}{':' + str(len(alerts)) if len(alerts) > 1 else ''}] {name}" + (
        f" ({sev})" if sev else ""
    )
    lines: list[str] = []
    for a in alerts:
        labels = a.get("labels", {})
        ann = a.get("annotations", {})
        where = ", ".join(
            f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("alertname", "severity")
        )
        lines.append(
            f"{str(a.get('status', status)).upper()} {labels.get('alertname', name)}"
            f" [{labels.get('severity', '?')}] {where}"
        )
        if ann.get("summary"):
            lines.append(f"  {ann['summary']}")
        if ann.get("description"):
            lines.append(f"  {ann['description']}")
        lines.append(f"  since {a.get('startsAt', '?')}")
        if ann.get("runbook_url"):
            lines.append(f"  runbook: {ann['runbook_url']}")
    return title, "\n".join(lines) or "(no alerts in the notification)"


def _handler(notifier: Notifier) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tx-notifier"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("notifier %s - %s", self.address_string(), fmt % args)

        def _json(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._json(200, {"ok": True})
            else:
                self._json(404, {"error": f"no such endpoint {self.path}"})

        def do_POST(self) -> None:
            if self.path != "/alertmanager":
                self._json(404, {"error": f"no such endpoint {self.path}"})
                return
            n = int(self.headers.get("Content-Length") or 0)
            try:
                payload = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self._json(400, {"error": f"body is not Alertmanager webhook JSON: {exc}"})
                return
            title, body = format_alertmanager(payload)
            ok = notifier.send(title, body, failure=payload.get("status") != "resolved")
            log.info("alert %r forwarded: %s", title, "ok" if ok else "a target refused it")
            # 502 makes Alertmanager retry: nothing is lost when a target is briefly down
            self._json(200 if ok else 502, {"delivered": ok, "title": title})

    return Handler


class NotifierServer:
    """The Alertmanager webhook receiver in a daemon thread; :meth:`stop` shuts it down."""

    def __init__(self, notifier: Notifier, host: str = "127.0.0.1", port: int = 9095) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(notifier))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="tx-notifier", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> NotifierServer:
        """Serve in the background."""
        self.thread.start()
        log.info("notifier on %s/alertmanager", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


notify_app = typer.Typer(
    help="Notifications through apprise: the Alertmanager webhook receiver.",
    no_args_is_help=True,
)


@notify_app.command("serve")
def serve(
    port: Annotated[int | None, typer.Option(help="Default: TX_NOTIFY_PORT (9095)")] = None,
    host: Annotated[str | None, typer.Option(help="Default: TX_NOTIFY_HOST")] = None,
) -> None:
    """Receive Alertmanager's webhook on POST /alertmanager and forward each notification to
    every TX_NOTIFY_URLS target (Ctrl-C stops)."""
    from pydantic import ValidationError

    try:
        s = NotifySettings()  # type: ignore[call-arg]
        notifier = Notifier.from_settings(s)
    except ValidationError as exc:
        typer.echo("error: TX_NOTIFY_URLS is not set: give it apprise URLs", err=True)
        raise typer.Exit(2) from exc
    except NotConfigured as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    server = NotifierServer(notifier, host or s.host, port if port is not None else s.port)
    server.start()
    typer.echo(f"notifier on {server.url}/alertmanager ({len(notifier.apprise)} targets)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.stop()
