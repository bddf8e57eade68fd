"""``tx explain``: why the engine decided what it did, from its journal.

* ``tx explain SYMBOL BAR`` — one decision in plain language (deterministic templates, see
  :mod:`engine.explain`) and the most similar decisions strictly before it, with their
  realised outcomes; ``--json`` for the data.
* ``tx explain report`` — performance attribution of the journal's trades by regime, feature
  family and venue, as a Markdown table and a PNG under ``reports/``
  (:mod:`titanovax.attribution`).
* ``tx explain worker`` — compute the missing feature contributions through serving's
  ``POST /v1/explain`` (:mod:`engine.explain_worker`), once or until stopped.

The journal is ``--journal`` (a SQLite path or a ``postgresql://`` URL), default the engine's
(``TX_JOURNAL_URL`` / ``TX_JOURNAL_PATH`` / ``$TX_HOME/engine/journal.sqlite``); a journal
holding several engines' rows needs ``--scope`` (``login:magic:mode``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import Context as _ClickContext
from typer.core import TyperGroup

from titanovax.errors import TxError


class _DefaultToShow(TyperGroup):
    """``tx explain SYMBOL BAR`` runs ``show``; ``report``/``worker`` are subcommands."""

    def parse_args(self, ctx: _ClickContext, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


explain_app = typer.Typer(
    cls=_DefaultToShow,
    help=(
        "Explain decisions: `tx explain SYMBOL BAR` (regime, members' votes, top features, "
        "risk verdict, fill, similar past decisions), `tx explain report` (P&L attribution), "
        "`tx explain worker` (feature contributions via serving)."
    ),
    no_args_is_help=True,
)

JournalOpt = Annotated[
    str | None,
    typer.Option(
        "--journal",
        help="Journal: SQLite path or postgresql:// URL (default: the engine's, TX_JOURNAL_URL / TX_JOURNAL_PATH)",
    ),
]
ScopeOpt = Annotated[
    str | None,
    typer.Option(
        help="Rows of this engine (login:magic:mode); needed when the journal holds several"
    ),
]


def _open(journal: str | None, scope: str | None) -> Any:
    from engine.config import EngineSettings
    from engine.journal import Journal

    target = journal or EngineSettings().journal_target
    if "://" not in target and not Path(target).exists():
        raise TxError(f"no journal at {target}", "pass --journal PATH, or run the engine first")
    j = Journal(target, durable=False)
    scopes = j.scopes()
    if scope is None:
        if not scopes:
            j.close()
            raise TxError(f"the journal {target} holds no decisions", "run the engine first")
        if len(scopes) > 1:
            j.close()
            raise TxError(
                f"the journal holds several engines' rows: {', '.join(scopes)}",
                "pick one with --scope",
            )
        scope = scopes[0]
    elif scope not in scopes:
        j.close()
        raise TxError(f"no decisions under scope {scope}", f"scopes here: {', '.join(scopes)}")
    j.set_scope(scope)
    return j


@explain_app.command("show")
def show(
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. EURUSD")],
    bar: Annotated[
        str, typer.Argument(help="Bar close: UTC epoch seconds or ISO time, e.g. 2026-01-12T08:00")
    ],
    journal: JournalOpt = None,
    scope: ScopeOpt = None,
    k: Annotated[int, typer.Option(min=1, max=50, help="How many similar past decisions")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON")] = False,
) -> None:
    """Explain one decision in plain language (also `tx explain SYMBOL BAR`)."""
    from engine.explain import explain_row, parse_bar

    try:
        bar_close = parse_bar(bar)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="BAR") from None
    j = _open(journal, scope)
    try:
        row = j.decision(symbol, bar_close)
        if row is None:
            raise TxError(
                f"no decision for {symbol} at bar {bar_close}",
                "list decisions with `tx engine status` or pick a bar close from the journal",
            )
        out = explain_row(row, j.rows_upto(symbol, bar_close), k=k)
    finally:
        j.close()
    typer.echo(json.dumps(out, indent=2, default=str) if as_json else out["text"])


@explain_app.command("report")
def report(
    journal: JournalOpt = None,
    scope: ScopeOpt = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the .md and .png go")] = Path(
        "reports"
    ),
    name: Annotated[str, typer.Option(help="File name (without extension)")] = "attribution",
    title: Annotated[str, typer.Option(help="Title of the report")] = "engine journal",
) -> None:
    """P&L attribution by regime, feature family and venue (Markdown + PNG)."""
    from titanovax.attribution import attribution_report

    j = _open(journal, scope)
    try:
        rows = j.rows()
    finally:
        j.close()
    _att, md, png = attribution_report(rows, title, out_dir, name)
    typer.echo(md.read_text())
    typer.echo(f"wrote {md} and {png}")


@explain_app.command("worker")
def worker(
    journal: JournalOpt = None,
    scope: ScopeOpt = None,
    serving_url: Annotated[
        str | None, typer.Option(help="Serving base URL (default TX_ENGINE_SERVING_URL)")
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Explain what is pending, then exit (else run until Ctrl-C)"),
    ] = False,
    poll_s: Annotated[float, typer.Option(min=0.05, help="Seconds between polls")] = 1.0,
) -> None:
    """Compute missing feature contributions through serving's POST /v1/explain."""
    import time

    from engine.config import EngineSettings
    from engine.explain_worker import ExplainClient, ExplainUnavailable, ExplainWorker

    s = EngineSettings()
    j = _open(journal, scope)
    target, sc = j.target, j.scope
    j.close()
    client = ExplainClient(serving_url or s.serving_url, token=s.secret("serving_token"))
    w = ExplainWorker(target, sc, client, poll_s=poll_s)
    try:
        if once:
            w.drain()
        else:
            w.start()
            while True:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except ExplainUnavailable as exc:
        raise TxError(str(exc), "start serving (`tx serve`) or pass --serving-url") from None
    finally:
        if not once:
            w.stop()
        client.close()
    typer.echo(f"contributions stored for {w.stored} decision(s)")
