"""``tx``: one command per stage. Each calls the same function the DAG task calls.

The tree: ``tx data ingest|validate|backfill|quarantine|release``, ``tx features ...``,
``tx models train|tune|promote|history|aliases|rollback|pull``, ``tx serve``, ``tx engine ...``,
``tx report ...``. Known errors print one line, ``error: what happened (what to do)``, and
exit non-zero (``tx --debug`` shows the trace); the older top-level spellings (``tx ingest``,
``tx promote``, ...) still work and name their new place on stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.core import Context as _ClickContext
from typer._click.exceptions import UsageError  # typer vendors click: its own exception classes
from typer.core import TyperGroup
from typer.exceptions import TyperException

from titanovax.notify import notify_app as _notify_app
from titanovax.observe import observe_app as _observe_app


class _TxGroup(TyperGroup):
    """The root group: every error that escapes a command becomes one line on stderr."""

    def invoke(self, ctx: _ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:  # a typo'd choice or option: one line, the choices in it
            msg = " ".join(exc.format_message().replace("Value error, ", "").split())
            where = exc.ctx.command_path if exc.ctx is not None else "tx"
            typer.echo(f"error: {msg} (see `{where} --help`)", err=True)
            raise typer.Exit(exc.exit_code) from None
        except (TyperException, typer.Exit, typer.Abort):
            raise  # usage errors, --help, exits: Typer prints them
        except Exception as exc:
            if ctx.meta.get("tx_debug"):
                raise
            from titanovax.errors import explain, unexpected

            err = explain(exc) or unexpected(exc)
            typer.echo(f"error: {err.line()}", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    cls=_TxGroup,
    help="TitanovaX: MT5 bars → validated lake → Feast/Redis → ONNX model → BentoML → engine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold tokens and passwords
)
data_app = typer.Typer(
    help="The bar lake: ingest, validate, backfill; the validation quarantine.",
    no_args_is_help=True,
)
features_app = typer.Typer(
    help="Feast feature repo: apply, build, materialise, stream, get (point-in-time), catalog, env.",
    no_args_is_help=True,
)
models_app = typer.Typer(
    help="Models: train, tune, promote (gate), registry aliases and their audit, pull a bundle.",
    no_args_is_help=True,
)
engine_app = typer.Typer(help="The live engine.", no_args_is_help=True)
report_app = typer.Typer(help="Reports.", no_args_is_help=True)
monitor_app = typer.Typer(
    help="The monitoring loop: run the checks (freshness, drift, ...), query their results, "
    "serve them to Prometheus.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(engine_app, name="engine")
app.add_typer(_notify_app, name="notify")
app.add_typer(_observe_app, name="observe")
app.add_typer(report_app, name="report")
app.add_typer(monitor_app, name="monitor")

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
Date = Annotated[
    datetime,
    typer.Option(formats=DATE_FORMATS, metavar="YYYY-MM-DD[THH:MM]", help="UTC"),
]


class EngineMode(StrEnum):
    live = "live"
    paper = "paper"
    backtest = "backtest"


class Writer(StrEnum):
    direct = "direct"
    feast = "feast"


class FeatureService(StrEnum):
    trend_v1 = "trend_v1"
    trend_v2 = "trend_v2"


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


def _quiet_third_party() -> None:
    """No third-party warnings, progress bars or colours in logs and pipes (entry point only)."""
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its logger at import
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("NO_COLOR", "1")  # Feast's CLI/materialise colours (click/colorama)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)
    except ImportError:  # pragma: no cover - sqlalchemy comes with mlflow and airflow
        pass


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full trace of an error instead of one line.")
    ] = False,
) -> None:
    ctx.meta["tx_debug"] = debug
    _quiet_third_party()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in (
        "feast",
        "great_expectations",
        "urllib3",
        "httpx",
        "alembic",
        "matplotlib",
        "mlflow",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # warnings a library re-enables for itself (ibis/duckdb deprecations) go to the logging
    # system, shown with -v only
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose else logging.ERROR)
    from titanovax.settings import unknown_env_names

    for name, close in unknown_env_names():
        guess = f"did you mean {close}?" if close else "see .env.example for the settings"
        typer.echo(f"warning: {name} is not a TitanovaX setting and is ignored ({guess})", err=True)


def _renamed(old: str, new: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under its old name: same options, plus a one-line notice naming the new one."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        typer.echo(f"warning: `tx {old}` is deprecated; use `tx {new}`", err=True)
        return fn(*args, **kwargs)

    run.__doc__ = f"Deprecated: use `tx {new}`."
    return run


def _settings():
    from titanovax.settings import PlatformSettings

    return PlatformSettings()


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _symbols(symbol: str | None) -> list[str]:
    return [symbol] if symbol else _settings().symbols


@data_app.command("ingest")
def ingest(
    start: Date,
    end: Date,
    symbol: Annotated[str | None, typer.Option(help="Default: TX_SYMBOLS")] = None,
) -> None:
    """Stage the bars of [start, end) from the MT5 gateway (server time → UTC). Exit 1 when the
    interval has no bars or an export cannot be read (one line on stderr)."""
    from engine.mt5 import TerminalError
    from feature_repo.pipeline.ingest import NoBarsError, autodetect_exports, check_ingested
    from feature_repo.pipeline.ingest import ingest as run

    settings = _settings()  # a bad setting is the top-level handler's one line (exit 2)
    try:
        s, note = autodetect_exports(settings)
        if note:
            typer.echo(note, err=True)
        results = [
            run(s, sym, s.timeframe, _utc(start), _utc(end)) for sym in _symbols_of(s, symbol)
        ]
    except (ValueError, KeyError, TerminalError) as exc:  # no such column, pair or symbol
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _echo([r.to_dict() for r in results])
    try:
        check_ingested(results)
    except NoBarsError as exc:
        typer.echo(f"{'warning' if exc.expected else 'error'}: {exc}", err=True)
        raise typer.Exit(1) from exc


@data_app.command("validate")
def validate(start: Date, end: Date, symbol: Annotated[str | None, typer.Option()] = None) -> None:
    """Validate staged bars with Great Expectations: pass → lake (soft flags beside it), hard
    failure → quarantine (exit 1), nothing staged → exit 1. Severities:
    TX_VALIDATION_SEVERITY / TX_VALIDATION_CONFIG."""
    from feature_repo.pipeline.ingest import NoBarsError, autodetect_exports
    from feature_repo.pipeline.validate import QuarantinedSymbols, validate_symbols

    settings = _settings()  # a bad setting is the top-level handler's one line (exit 2)
    try:
        s, note = autodetect_exports(settings)
    except (ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if note:
        typer.echo(note, err=True)
    try:
        _echo(validate_symbols(s, _symbols_of(s, symbol), s.timeframe, _utc(start), _utc(end)))
    except QuarantinedSymbols as exc:
        _echo([r.to_dict() for r in exc.reports])
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except NoBarsError as exc:
        typer.echo(f"{'warning' if exc.expected else 'error'}: {exc}", err=True)
        raise typer.Exit(1) from exc


def _symbols_of(s: object, symbol: str | None) -> list[str]:
    return [symbol] if symbol else list(s.symbols)  # type: ignore[attr-defined]


# --- data: the validation quarantine (validation helper) ---------------------------------------


@data_app.command("quarantine")
def data_quarantine() -> None:
    """List the quarantined day partitions with their hard failures and folders."""
    from feature_repo.pipeline.validate import list_quarantine

    _echo(list_quarantine(_settings()))


@data_app.command("release")
def data_release(
    symbol: Annotated[str, typer.Argument(help="e.g. EURUSD")],
    day: Annotated[datetime, typer.Argument(formats=["%Y-%m-%d"], help="UTC day of the partition")],
    timeframe: Annotated[str | None, typer.Option(help="Default: TX_TIMEFRAME")] = None,
) -> None:
    """Re-validate a quarantined partition (fix its bars.parquet first); pass → lake (exit 0)."""
    from feature_repo.pipeline.validate import BatchQuarantined, release_partition

    s = _settings()
    try:
        _echo(release_partition(s, symbol.upper(), timeframe or s.timeframe, day.date()).to_dict())
    except BatchQuarantined as exc:
        _echo(exc.report.to_dict())
        typer.echo(f"error: still failing: {exc}", err=True)
        raise typer.Exit(1) from exc


@features_app.command("apply")
def features_apply() -> None:
    """Register the Feast definitions (feast apply) with the TX_* settings."""
    from feature_repo.pipeline.store import feast_apply

    typer.echo(feast_apply(_settings()))


@features_app.command("env")
def features_env() -> None:
    """Print the environment the feast CLI needs (use: eval "$(tx features env)")."""
    from feature_repo.pipeline.store import feast_env

    for k, v in feast_env(_settings()).items():
        typer.echo(f"export {k}='{v}'")


@features_app.command("build")
def features_build(
    start: Date, end: Date, symbol: Annotated[str | None, typer.Option()] = None
) -> None:
    """Compute offline features of [start, end) from the lake (exit 3 when no row is built)."""
    from feature_repo.pipeline.store import build_features
    from titanovax.errors import NothingDone

    s = _settings()
    out = [
        build_features(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict()
        for sym in _symbols(symbol)
    ]
    _echo(out)
    if not sum(r["rows"] for r in out):
        raise NothingDone(
            f"no feature row built for [{start:%Y-%m-%d}, {end:%Y-%m-%d})",
            "the lake holds no bars there: run `tx data backfill` or `tx data ingest` first",
        )


@features_app.command("materialize")
def features_materialize(start: Date, end: Date) -> None:
    """Materialise offline features of bars closing in the interval into Redis (exit 3 when
    the offline store holds no row there)."""
    from feature_repo.pipeline.store import VIEWS, materialize, offline_rows
    from titanovax import preflight
    from titanovax.errors import NothingDone
    from titanovax.progress import progress

    s = _settings()
    preflight.redis_reachable(s)
    preflight.feast_applied(s)
    rows = offline_rows(s, _utc(start), _utc(end))
    if not sum(rows.values()):
        raise NothingDone(
            f"the offline store holds no feature row for [{start:%Y-%m-%d}, {end:%Y-%m-%d})",
            "build them first with `tx data backfill` or `tx features build`",
        )
    with progress("materialise", len(VIEWS)) as advance:
        for view in VIEWS:
            materialize(s, _utc(start), _utc(end), s.timeframe, views=(view,))
            advance(description=f"materialised {view}")
    counts = ", ".join(f"{v} {n}" for v, n in rows.items())
    typer.echo(f"materialised {sum(rows.values())} offline rows into {s.redis_url}: {counts}")


@features_app.command("stream")
def features_stream(
    writer: Annotated[
        Writer,
        typer.Option(
            help="direct (Feast's Redis format, one round trip) or feast (write_to_online_store)"
        ),
    ] = Writer.direct,
    max_bars: Annotated[
        int | None, typer.Option(help="Stop after this many bar closes (default: run until Ctrl-C)")
    ] = None,
    wait_s: Annotated[
        float, typer.Option(help="Seconds to wait after a close for every symbol's bar")
    ] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar="TX_PUSHER_METRICS_PORT", help="Serve Prometheus /metrics here"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(envvar="TX_PUSHER_METRICS_HOST")] = "127.0.0.1",
) -> None:
    """Streaming pusher: on each closed bar of the configured terminal, compute that bar's
    features (every view, every symbol) and write them to Redis."""
    import time

    import numpy as np

    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = _settings()
    pusher = FeaturePusher(s, open_platform_terminal(s), writer=writer.value)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host, registry=pusher.metrics.registry)

    def report(close: int, rows: dict) -> None:
        lag_ms = (time.time() - close) * 1e3
        logging.getLogger("tx.features.stream").info(
            "bar %s: %d symbols written %.1f ms after the close (compute %.1f ms)",
            datetime.fromtimestamp(close, UTC).isoformat(),
            len(rows),
            lag_ms,
            pusher.stats.compute_s[-1] * 1e3,
        )

    typer.echo(
        f"streaming {s.symbols} {s.timeframe} features to {s.redis_url} ({writer.value} writer); Ctrl-C stops"
    )
    try:
        pusher.run(max_bars=max_bars, wait_s=wait_s, on_push=report, push_last_closed=True)
    except KeyboardInterrupt:
        typer.echo("stopped")
    total = (
        np.array(pusher.stats.fetch_s)
        + np.array(pusher.stats.compute_s)
        + np.array(pusher.stats.write_s)
    )
    if len(total):
        typer.echo(
            f"pushed {pusher.pushed} rows; per bar p50 {np.percentile(total, 50) * 1e3:.1f} ms p99 {np.percentile(total, 99) * 1e3:.1f} ms"
        )


@features_app.command("get")
def features_get(
    start: Date,
    end: Date,
    out: Annotated[str, typer.Option(help="Output parquet file")],
    service: Annotated[FeatureService, typer.Option(help="Feast feature service")] = (
        FeatureService.trend_v2
    ),
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated (default: TX_SYMBOLS)")
    ] = None,
) -> None:
    """Point-in-time features of a service (Feast get_historical_features) at every bar close
    of [start, end), written to a parquet file."""
    from pathlib import Path

    from feature_repo.pipeline.store import historical_features

    s = _settings()
    syms = [x.strip().upper() for x in symbols.split(",")] if symbols else s.symbols
    df = historical_features(s, service.value, syms, _utc(start), _utc(end))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    _echo(
        {
            "rows": len(df),
            "columns": len(df.columns),
            "symbols": syms,
            "service": service.value,
            "out": out,
        }
    )


@features_app.command("catalog")
def features_catalog() -> None:
    """The feature catalogue: name, family, window (bars, = first valid bar + 1), formula."""
    from feature_repo.pipeline.transforms import (
        FEATURES,
        SEQ_CHANNELS,
        SEQ_LEN,
        SEQ_WARMUP_BARS,
        TREND_V1_FEATURES,
    )

    for f in FEATURES:
        tag = "v1+v2" if f.name in TREND_V1_FEATURES else "v2"
        typer.echo(f"{f.name:20s} {f.family:13s} {f.window:4d}  {tag:5s}  {f.formula}")
    typer.echo(
        f"{'seq':20s} {'sequence':13s} {SEQ_WARMUP_BARS:4d}  v2     {SEQ_LEN} bars x ({', '.join(SEQ_CHANNELS)}), float32"
    )


@data_app.command("backfill")
def backfill(start: Date, end: Date) -> None:
    """Run ingest → validate → features for every day of [start, end), then materialise
    (exit 3 when no bar was ingested)."""
    from feature_repo.pipeline.backfill import backfill as run
    from titanovax import preflight
    from titanovax.errors import NothingDone
    from titanovax.progress import progress

    s = _settings()
    preflight.redis_reachable(s)
    preflight.feast_applied(s)
    days = max((_utc(end) - _utc(start)).days, 1)
    with progress("backfill", days) as advance:
        counts = run(
            s,
            _utc(start),
            _utc(end),
            on_day=lambda d: advance(description=f"backfill {d:%Y-%m-%d}"),
        )
    typer.echo(
        f"backfilled {counts.days} days of {','.join(s.symbols)} {s.timeframe}: "
        f"{counts.bars_ingested} bars ingested, {counts.bars_passed} passed, "
        f"{counts.bars_quarantined} quarantined, {counts.feature_rows} feature rows, "
        f"{'materialised' if counts.materialised else 'not materialised'}"
    )
    if not counts.bars_ingested:
        raise NothingDone(
            f"no bar ingested for [{start:%Y-%m-%d}, {end:%Y-%m-%d})",
            "the terminal or export holds no bars there (weekend? TX_MT5_EXPORTS?)",
        )


# --- training: train / tune / promote / models / report (owner: training) ----------------------
AsOf = Annotated[
    datetime | None,
    typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"],
        metavar="YYYY-MM-DD[THH:MM]",
        help="UTC end of the test window (omit for configs with explicit ranges)",
    ),
]
Config = Annotated[
    str,
    typer.Option(
        "--config", help="Experiment YAML: a name in training/configs (trend_v1, ...) or a path"
    ),
]
# the older name of --config, still accepted
ExperimentAlias = Annotated[str | None, typer.Option("--experiment", hidden=True)]


def _experiment(config: str, experiment: str | None, as_of: datetime | None) -> tuple[Any, Any]:
    """Settings and the experiment config, after the checks that need no work: the config
    exists, the Feast repo is applied, the lake holds the experiment's window."""
    from titanovax import preflight

    s = _settings()
    cfg = preflight.experiment_config(experiment or config)
    preflight.feast_applied(s)
    preflight.history_covers(s, cfg, _utc(as_of) if as_of else None)
    return s, cfg


@models_app.command("train")
def train(
    as_of: AsOf = None,
    config: Config = "trend_v1",
    experiment: ExperimentAlias = None,
    study: Annotated[
        str | None,
        typer.Option(
            help="Use the best parameters of this Optuna study (and of <study>-transformer for an ensemble)"
        ),
    ] = None,
) -> None:
    """Build the point-in-time dataset, train, backtest, export ONNX (parity-checked) and register."""
    from training.train import build_training_dataset, train_and_register

    s, cfg = _experiment(config, experiment, as_of)
    when = _utc(as_of) if as_of else None
    path = build_training_dataset(s, cfg, when)
    best: dict[str, dict] = {}
    if study:
        from training.tune import best_member_params

        best = best_member_params(s, cfg, study)
    _echo(
        train_and_register(
            s,
            cfg,
            path,
            when,
            params=best.get("xgboost"),
            transformer_params=best.get("transformer"),
        ).to_dict()
    )


@models_app.command("tune")
def tune(
    as_of: AsOf = None,
    config: Config = "trend_v1",
    experiment: ExperimentAlias = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes sharing one study")] = 1,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials in all, per member study (default: the config's tune.n_trials / tune.transformer.n_trials)"
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: <experiment>-<dataset>)")
    ] = None,
) -> None:
    """Optuna (TPE + median pruning on purged walk-forward folds) in TX_OPTUNA_STORAGE; logs to MLflow.

    An ensemble config tunes both members: XGBoost in <study>, the transformer in <study>-transformer."""
    from training.train import build_training_dataset
    from training.tune import tune as run

    s, cfg = _experiment(config, experiment, as_of)
    when = _utc(as_of) if as_of else None
    path = build_training_dataset(s, cfg, when)
    from training.tune import member_trials, study_name_for

    name = study or study_name_for(cfg, path)
    total = sum(member_trials(cfg, trials).values())
    res = _with_trial_progress(
        s.optuna_storage_url,
        name,
        total,
        lambda: run(s, cfg, path, when, workers=workers, n_trials=trials, study_name=name),
    )
    _echo(res.to_dict())
    typer.echo(
        f"tuned {res.n_trials} trials in study {res.study_name} (best log loss "
        f"{res.best_value:.4f})"
        + (f"; transformer {res.transformer.n_trials} trials" if res.transformer else ""),
        err=True,
    )


def _with_trial_progress(storage: str, study: str, total: int, work: Callable[[], Any]) -> Any:
    """Run ``work`` (the tuning) while a progress bar counts the finished trials of the
    study's members in the Optuna storage (a TTY only; workers may be other processes)."""
    import threading

    from titanovax.progress import interactive, progress

    if not interactive():
        return work()
    import optuna

    def finished() -> int:
        n = 0
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            if summary.study_name == study or summary.study_name.startswith(f"{study}-"):
                n += summary.n_trials
        return n

    before = finished()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=target, name="tx-tune", daemon=True)
    with progress(f"tune {study}", total) as advance:
        thread.start()
        seen = 0
        while thread.is_alive():
            thread.join(1.0)
            now = finished() - before
            advance(now - seen)
            seen = now
    if "error" in out:
        raise out["error"]
    return out["result"]


@models_app.command("promote")
def promote(
    version: str,
    actor: Annotated[str | None, typer.Option(help="Who (default user@host)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The gate decision as JSON on stdout (only)")
    ] = False,
) -> None:
    """Run the promotion gate for a registered version; passing moves `champion` (audited).
    Exit 1 when the gate refuses."""
    from titanovax.preflight import model_version_exists
    from training.gate import promote as gate
    from training.registry import notify_serving

    s = _settings()
    model_version_exists(s, version)
    decision = gate(s, version, actor=actor)
    if as_json:
        _echo(decision.to_dict())
    else:
        verdict = "promoted to champion" if decision.promoted else "refused"
        was = decision.previous_champion
        typer.echo(
            f"{s.model_name} v{decision.version}: {verdict} ({decision.reason}); "
            f"champion before: {'v' + was if was else 'none'}"
        )
    if not decision.promoted:
        raise typer.Exit(1)
    notify_serving(s)  # logs its outcome (stderr)


@models_app.command("history")
def models_history(
    limit: Annotated[int, typer.Option(help="Last N moves")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Audit history of alias moves: when, who, action, version, aliases before → after, reason."""
    from training.registry import history

    rows = history(_settings(), limit)
    if as_json:
        _echo(rows)
        return
    for r in rows:
        reason = r.get("evidence", {}).get("reason", "")
        typer.echo(
            f"{r['time'][:19]}  {r['actor']:<24} {r['action']:<18} v{r['version']:<4} {r['before']} → {r['after']}  {reason}"
        )


@models_app.command("aliases")
def models_aliases() -> None:
    """The current aliases of the registered model."""
    from training.registry import client_for, current_aliases

    s = _settings()
    _echo(current_aliases(client_for(s), s.model_name))


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[
        str, typer.Option(help="Why (recorded in the audit history)")
    ] = "manual rollback",
    actor: Annotated[str | None, typer.Option(help="Who (default user@host)")] = None,
) -> None:
    """Move `champion` back to `previous` (audited), then ask serving to reload."""
    from training.registry import RollbackError, notify_serving, rollback

    s = _settings()
    try:
        _echo(rollback(s, actor=actor, reason=reason))
    except RollbackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    notify_serving(s)  # logs its outcome (stderr)


@models_app.command("pull")
def models_pull(
    ref: Annotated[str, typer.Argument(help="Alias (champion, challenger, previous) or version")],
    out: Annotated[
        str | None, typer.Option(help="Folder to write (default $TX_HOME/bundles/<ALIAS>)")
    ] = None,
) -> None:
    """Fetch a registered bundle (model.onnx + manifest.json, sha256-checked) into a folder:
    the one `tx engine run --mode backtest` uses, or TX_ENGINE_BUNDLE_DIR for the engine."""
    from pathlib import Path

    from titanovax.engine_world import default_bundle_dir
    from training.registry import pull_bundle

    s = _settings()
    info = pull_bundle(s, ref, Path(out) if out else default_bundle_dir(s, ref))
    typer.echo(
        f"pulled {info['model_name']} v{info['version']} ({ref}, {info['features']} features, "
        f"sha256 {info['bundle_sha256'][:12]}) into {info['dir']}"
    )


@report_app.command("real-exports")
def report_real_exports(
    out: Annotated[str, typer.Option(help="Markdown file to write")] = "reports/real_exports.md",
    raw: Annotated[
        str | None, typer.Option(help="Folder of the exports (default ../shared/data/raw)")
    ] = None,
    only: Annotated[
        str, typer.Option(help="Comma-separated file-name fragments to restrict to")
    ] = "",
    config: Annotated[
        str | None, typer.Option(help="Report spec (default training/configs/real_exports_v1.yaml)")
    ] = None,
    experiments: Annotated[
        str, typer.Option(help="Comma-separated experiments instead of the spec's list")
    ] = "",
    reuse_results: Annotated[
        bool,
        typer.Option(
            "--reuse-results",
            help="Take a file's result.json from an earlier run with the same rows (the report says so)",
        ),
    ] = False,
) -> None:
    """Out-of-sample after-cost results per real export, with CIs and baselines; each model
    under the old decision rule and under the policy learned on its training window's folds.

    Each file is ingested, validated and featurised into $TX_HOME/real_exports/<file>/,
    reused while unchanged. Datasets come from Feast get_historical_features."""
    from pathlib import Path

    from titanovax.settings import PROJECT_ROOT
    from training.real_exports import real_exports_report

    raw_dir = Path(raw) if raw else PROJECT_ROOT.parent / "shared" / "data" / "raw"
    only_list = [o for o in only.split(",") if o] or None
    text = real_exports_report(
        raw_dir,
        Path(out),
        Path(config) if config else None,
        only_list,
        _settings(),
        [e for e in experiments.split(",") if e] or None,
        reuse_results,
    )
    typer.echo(text)


@report_app.command("grid")
def report_grid(
    out: Annotated[
        str, typer.Option(help="Markdown file to write")
    ] = "reports/grid-real-exports.md",
    raw: Annotated[
        str | None, typer.Option(help="Folder of the exports (default ../shared/data/raw)")
    ] = None,
    only: Annotated[
        str, typer.Option(help="Comma-separated file-name fragments to restrict to")
    ] = "",
    engine: Annotated[bool, typer.Option(help="Also replay each file through the engine")] = True,
) -> None:
    """The grid strategy on the real exports' test ranges, after costs, beside the baselines
    (vectorised and through the engine; docs/execution-grid.md)."""
    from pathlib import Path

    from training.grid_report import RAW_DIR, grid_report

    only_list = [o for o in only.split(",") if o] or None
    grid_report(Path(raw) if raw else RAW_DIR, Path(out), only_list, engine=engine)
    typer.echo(f"wrote {out}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(envvar="TX_SERVING_PORT")] = 3000,
    host: Annotated[str, typer.Option(envvar="TX_SERVING_HOST")] = "127.0.0.1",
    wait_for_champion: Annotated[
        bool,
        typer.Option(
            "--wait-for-champion",
            help="No champion yet: poll the registry every few seconds until one is promoted "
            "(as `tx stack` runs it), instead of failing.",
        ),
    ] = False,
) -> None:
    """Import `champion` (and `challenger`, scored in shadow) from MLflow into BentoML and serve
    POST /v1/predict over HTTP with TX_SERVING_TOKEN; aliases are polled for hot reload
    (Ctrl-C or SIGTERM stops the server and its workers)."""
    from serving.importer import AliasNotSetError, import_from_registry
    from serving.server import start_server, stop_server, wait_ready
    from serving.settings import AuthConfigError, ServingSettings

    s = _settings()
    ss = ServingSettings()
    try:
        token = ss.require_token()
    except AuthConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    os.environ.setdefault("BENTOML_HOME", str(s.home / "bentoml"))
    if wait_for_champion:
        from serving.importer import wait_for_alias

        try:
            imported = wait_for_alias(s.tracking_uri, s.model_name, ss.model_alias)
        except KeyboardInterrupt:
            return
    else:
        imported = import_from_registry(s.tracking_uri, s.model_name, ss.model_alias)
    challenger = None
    if ss.serving_challenger_alias:
        try:
            challenger = import_from_registry(
                s.tracking_uri, s.model_name, ss.serving_challenger_alias
            )
        except AliasNotSetError:
            challenger = None
    proc = start_server(
        host=host,
        port=port,
        model_tag=imported.bentoml_tag,
        bentoml_home=os.environ["BENTOML_HOME"],
        log_path=s.home / "logs" / "serving.log",
        token=token,
        allow_no_auth=token is None,
        challenger_tag=challenger.bentoml_tag if challenger else None,
        tracking_uri=s.tracking_uri,
        model_name=s.model_name,
        env={"TX_HOME": str(s.home)},
    )

    def _terminate(signum: int, frame: Any) -> None:  # SIGTERM stops like Ctrl-C: cleanly
        raise KeyboardInterrupt

    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        wait_ready(f"http://{host}:{port}", 120, proc=proc, token=token)
        shadow = f", challenger v{challenger.mlflow_version} in shadow" if challenger else ""
        typer.echo(
            f"serving {imported.bentoml_tag} (MLflow v{imported.mlflow_version}{shadow}) at http://{host}:{port}/v1/predict"
        )
        proc.wait()
    except KeyboardInterrupt:
        typer.echo("stopping the server")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop
        stop_server(proc)


@engine_app.command("run")
def engine_run(
    mode: Annotated[
        EngineMode | None,
        typer.Option(
            help="live (native/bridge terminal) | paper (simulated terminal, wall clock) | backtest (simulated terminal and clock); default TX_ENGINE_MODE"
        ),
    ] = None,
    start: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="backtest: first bar close (UTC)"
        ),
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="backtest: last bar close (UTC)"),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            help="Comma-separated feature names (the bundle's order); default: the bundle's manifest, else trend_v1"
        ),
    ] = "",
) -> None:
    """Run the engine: the same code in live, paper and backtest mode (control API when TX_ENGINE_TOKEN is set)."""
    from titanovax.engine_world import run_engine

    out = run_engine(
        mode.value if mode else None,
        start_utc=int(_utc(start).timestamp()) if start else None,
        end_utc=int(_utc(end).timestamp()) if end else None,
        feature_names=[f for f in features.split(",") if f],
    )
    typer.echo(json.dumps(out, indent=2, default=str))
    unserved = (out.get("refusals") or {}).get("serving_unavailable", 0)
    if out.get("mode") == "backtest" and unserved and unserved >= out.get("decisions", 0):
        from titanovax.errors import NothingDone

        raise NothingDone(
            f"the backtest refused all {unserved} decisions: serving_unavailable",
            "run `tx models pull champion` so the backtest scores in-process, or fix serving",
        )


def _audit_line(r: dict[str, Any]) -> str:
    d = r.get("detail") or {}
    before, after = d.get("before") or {}, d.get("after") or {}
    change = f"{before.get('state', '?')} -> {after.get('state', '?')}" if before or after else ""
    extra = []
    if "flattened" in d:
        extra.append(f"flattened {len(d['flattened'])} position(s)")
    if d.get("new"):
        extra.append("mismatches: " + ", ".join(f"{m['kind']} {m['key']}" for m in d["new"]))
    if d.get("resolved"):
        extra.append(f"resolved {len(d['resolved'])}")
    if d.get("acknowledged_mismatches"):
        extra.append(f"acknowledged {len(d['acknowledged_mismatches'])} mismatch(es)")
    if "result" in d:
        extra.append(f"result {json.dumps(d['result'], default=str)[:80]}")
    return "  ".join(
        x
        for x in (
            str(r.get("at", "")),
            f"{r.get('action', ''):<18}",
            f"by {r.get('actor', '')}",
            change,
            f"reason: {r['reason']}" if r.get("reason") else "",
            "; ".join(extra),
        )
        if x
    )


@engine_app.command("history")
def engine_history(
    limit: Annotated[
        int, typer.Option(min=1, max=500, help="How many rows, newest first (1-500)")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="The rows as JSON on stdout")] = False,
    api: Annotated[
        str | None,
        typer.Option(
            help="Ask a running engine's control API at this URL (e.g. http://127.0.0.1:8765, "
            "bearer TX_ENGINE_TOKEN) instead of reading the journal"
        ),
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option(
            help="Journal scope login:magic:mode; default every login of TX_ENGINE_MAGIC and "
            "TX_ENGINE_MODE"
        ),
    ] = None,
) -> None:
    """The operator audit: kill, flatten, resume, reload, reduce and reconciliation actions (who, when UTC, why, state before -> after)."""
    from pathlib import Path

    from engine.config import EngineSettings
    from engine.journal import Journal, redact_dsn
    from titanovax.errors import NothingDone, TxError

    es = EngineSettings()
    if api:
        import httpx

        token = es.secret("engine_token")
        if not token:
            raise TxError("--api needs the control API token", "set TX_ENGINE_TOKEN", exit_code=2)
        try:
            r = httpx.get(
                f"{api.rstrip('/')}/api/audit",
                params={"limit": limit},
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
        except httpx.HTTPError as exc:
            raise TxError(
                f"the engine's control API at {api} did not answer: {exc}",
                "is the engine running with TX_ENGINE_TOKEN set?",
            ) from exc
        if r.status_code != 200:
            raise TxError(f"the control API answered {r.status_code}: {r.text[:200]}")
        rows = r.json()
    else:
        target = es.journal_target
        if not target.startswith(("postgresql://", "postgres://")) and not Path(target).is_file():
            raise TxError(
                f"no engine journal at {target}",
                "run the engine first, or set TX_JOURNAL_PATH / TX_JOURNAL_URL",
                exit_code=2,
            )
        j = Journal(target)
        try:
            rows = j.audit_rows(limit, scope_like=scope or f"%:{es.magic}:{es.mode}")
        finally:
            j.close()
        if not rows and not as_json:
            raise NothingDone(
                f"no audit rows in {redact_dsn(target)} for scope {scope or f'*:{es.magic}:{es.mode}'}",
                "check TX_ENGINE_MAGIC / TX_ENGINE_MODE or --scope",
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        typer.echo(_audit_line(row))


@app.command()
def demo(
    history_days: Annotated[
        int, typer.Option(help="Days of history for features and training")
    ] = 30,
    config: Config = "trend_v1",
    experiment: ExperimentAlias = None,
) -> None:
    """Run everything end to end on embedded defaults and print a summary."""
    from titanovax.demo import run_demo

    typer.echo(run_demo(history_days=history_days, experiment=experiment or config).render())


# --- MT5 gateway (owner: MT5 gateway) -------------------------------------------------------------
mt5_app = typer.Typer(
    help="MT5 gateway: broker time check, symbol metadata, a simulated bridge.",
    no_args_is_help=True,
)
app.add_typer(mt5_app, name="mt5")
app.add_typer(__import__("titanovax.stack", fromlist=["stack_app"]).stack_app, name="stack")
app.add_typer(__import__("titanovax.backup", fromlist=["backup_app"]).backup_app, name="backup")
app.add_typer(
    __import__("titanovax.explain_cli", fromlist=["explain_app"]).explain_app, name="explain"
)
app.add_typer(
    __import__("titanovax.slippage_cli", fromlist=["slippage_app"]).slippage_app, name="slippage"
)


@mt5_app.command("detect-offset")
def mt5_detect_offset(
    path: Annotated[
        str | None,
        typer.Option(
            help="An MT5 export file or a folder of them; default: the configured terminal"
        ),
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Default: TX_SYMBOLS")] = None,
    timeframe: Annotated[
        str | None, typer.Option(help="Default: TX_TIMEFRAME (H1 or finer to be conclusive)")
    ] = None,
    days: Annotated[int, typer.Option(help="Terminal: days of bars to read")] = 120,
    rule: Annotated[
        str | None,
        typer.Option(help="Rule to check; default TX_BROKER_TZ / TX_BROKER_UTC_OFFSET_HOURS"),
    ] = None,
) -> None:
    """Infer the broker's UTC offset from weekly opens/closes and check the configured rule."""
    from pathlib import Path

    from engine.mt5.brokertime import check_rule, parse_rule
    from feature_repo.pipeline.ingest import broker_rule, check_broker_time

    s = _settings()
    chosen = parse_rule(rule, s.broker_utc_offset_hours) if rule else broker_rule(s)
    if path is None:
        if rule:
            s = s.model_copy(update={"broker_tz": chosen.spec})
        tf = timeframe or s.timeframe
        _echo([check_broker_time(s, sym, tf, days) for sym in _symbols(symbol)])
        return
    from engine.mt5.exports import read_export, scan_exports

    p = Path(path)
    files = sorted(scan_exports(p).values()) if p.is_dir() else [p]
    out = []
    for f in files:
        e = read_export(f)
        if (symbol and e.symbol != symbol) or (timeframe and e.timeframe != timeframe):
            continue
        out.append(
            {
                "file": f.name,
                "symbol": e.symbol,
                "bars": len(e),
                **check_rule(chosen, e.rates["time"], e.timeframe, symbol=e.symbol).to_dict(),
            }
        )
    _echo(out)


@mt5_app.command("symbol-info")
def mt5_symbol_info(
    symbol: Annotated[str | None, typer.Option(help="Default: TX_SYMBOLS")] = None,
    store: Annotated[bool, typer.Option(help="Also write <lake>/symbol=S/_symbol.json")] = False,
) -> None:
    """The contract metadata of symbols from the configured terminal's symbol_info."""
    from feature_repo.pipeline import lake
    from feature_repo.pipeline.ingest import open_platform_terminal

    s = _settings()
    term = open_platform_terminal(s)
    out = []
    for sym in _symbols(symbol):
        info = term.symbol_info(sym)
        if info is None:
            out.append({"symbol": sym, "error": list(term.last_error())})
            continue
        meta = lake.symbol_meta(info)
        if store:
            meta["stored"] = str(lake.write_symbol_meta(s.lake_dir, sym, meta))
        out.append(meta)
    _echo(out)


@mt5_app.command("serve-sim")
def mt5_serve_sim(
    port: Annotated[
        int, typer.Option(help="Port of the rpyc classic server (mt5linux's default 18812)")
    ] = 18812,
    host: str = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Synthetic market seed")] = 7,
    clock_file: Annotated[
        str | None, typer.Option(help="Read the terminal's UTC clock (epoch s) from this file")
    ] = None,
    login: Annotated[int, typer.Option(help="Account login the terminal reports")] = 50_000_001,
    spread_add: Annotated[
        int, typer.Option(help="Points added to every bar's spread (a wider-quoting venue)")
    ] = 0,
) -> None:
    """Serve the simulated terminal as an mt5linux bridge (for TX_MT5_MODE=bridge without MT5)."""
    from engine.mt5.simserver import main

    args = ["--host", host, "--port", str(port), "--seed", str(seed)]
    args += ["--login", str(login), "--spread-add", str(spread_add)]
    main(args + (["--clock-file", clock_file] if clock_file else []))


# --- the older spellings: same commands, a one-line notice naming the new place ----------------
for _old, _new, _fn in (
    ("ingest", "data ingest", ingest),
    ("validate", "data validate", validate),
    ("backfill", "data backfill", backfill),
    ("train", "models train", train),
    ("tune", "models tune", tune),
    ("promote", "models promote", promote),
):
    app.command(_old, hidden=True)(_renamed(_old, _new, _fn))


# --- tx monitor -----------------------------------------------------------------------------
def _status_line(r: dict[str, Any]) -> str:
    return f"{r['at'][:16]}  {r['status']:<8} {r['check']:<10} {r['subject']:<28} {r['detail']}"


@monitor_app.command("run")
def monitor_run(
    check: Annotated[
        list[str] | None,
        typer.Option("--check", help="Run only this check (repeatable); default: every check"),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Judge this bundle folder (e.g. the engine's TX_ENGINE_BUNDLE_DIR) instead of "
            "pulling the registry's champion"
        ),
    ] = None,
    at: Annotated[
        datetime | None,
        typer.Option(
            formats=DATE_FORMATS,
            metavar="YYYY-MM-DD[THH:MM]",
            help="Judge as of this UTC time (default: now)",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The run as JSON on stdout (only)")
    ] = False,
) -> None:
    """Run the monitoring checks once: store the results, log an MLflow run (experiment
    `monitoring`, Evidently report attached), call the actions. Exit 0 when nothing breached
    (warn and skipped included), 1 when a check breached, 2 on a usage error."""
    from titanovax.monitor import CHECKS, MonitorContext, run
    from titanovax.progress import progress

    unknown = [c for c in check or [] if c not in CHECKS]
    if unknown:
        typer.echo(
            f"error: unknown check {', '.join(unknown)} (known: {', '.join(CHECKS)}; see `tx monitor run --help`)",
            err=True,
        )
        raise typer.Exit(2)
    if bundle is not None and not (bundle / "manifest.json").is_file():
        typer.echo(
            f"error: --bundle {bundle} has no manifest.json (pull one with `tx models pull`)",
            err=True,
        )
        raise typer.Exit(2)
    s = _settings()
    ctx = MonitorContext(s, now=_utc(at) if at else datetime.now(UTC), bundle_dir=bundle)
    names = check or list(CHECKS)
    with progress("monitor", len(names)) as advance:
        first = [True]

        def step(name: str) -> None:
            if not first[0]:
                advance()
            first[0] = False
            advance(0, description=f"check {name}")

        mr = run(ctx, names, on_check=step)
        advance()
    if as_json:
        _echo(mr.to_dict())
    else:
        for r in mr.results:
            if not r.subject.startswith(("feature:", "output:")):
                typer.echo(_status_line(r.to_dict()))
        counts = {
            st: sum(r.status == st for r in mr.results)
            for st in ("ok", "warn", "breach", "skipped")
        }
        typer.echo(
            f"run {mr.run_id}: {len(mr.results)} results ("
            + ", ".join(f"{n} {st}" for st, n in counts.items())
            + f") in {sum(mr.durations_s.values()):.1f} s; MLflow run {mr.mlflow_run_id}"
        )
    if mr.worst == "breach":
        raise typer.Exit(1)


@monitor_app.command("results")
def monitor_results(
    check: Annotated[str | None, typer.Option(help="Only this check's rows")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest N rows")] = 50,
    latest: Annotated[bool, typer.Option(help="Only the newest run's rows")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stored results, newest first (from the results table, TX_MONITOR_DB_URL)."""
    from titanovax.monitor import query_results

    rows = query_results(_settings().monitor_db, check, limit, latest_run_only=latest)
    if as_json:
        _echo(rows)
        return
    if not rows:
        typer.echo("no monitoring results yet (run `tx monitor run`)")
        return
    for r in rows:
        typer.echo(_status_line(r))


@monitor_app.command("exporter")
def monitor_exporter(
    port: Annotated[int, typer.Option(envvar="TX_MONITOR_EXPORTER_PORT")] = 9113,
    host: Annotated[str, typer.Option(envvar="TX_MONITOR_EXPORTER_HOST")] = "127.0.0.1",
) -> None:
    """Serve the newest monitoring verdicts on /metrics for Prometheus (tx_monitor_*); Ctrl-C stops."""
    import threading

    from titanovax.monitor import serve_exporter
    from titanovax.observe import redact_url

    db = _settings().monitor_db
    server = serve_exporter(db, host, port)
    typer.echo(f"monitor exporter on http://{host}:{port}/metrics ({redact_url(db)})")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.shutdown()


if __name__ == "__main__":
    app()
