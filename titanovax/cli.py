"""``tx``: one command per stage. Each calls the same function the DAG task calls."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Annotated

import typer

app = typer.Typer(
    help="TitanovaX: MT5 bars → validated lake → Feast/Redis → ONNX model → BentoML → engine.",
    no_args_is_help=True,
)
features_app = typer.Typer(
    help="Feast feature repo: apply, build, materialise, stream, get (point-in-time), catalog, env.",
    no_args_is_help=True,
)
engine_app = typer.Typer(help="The live engine.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(engine_app, name="engine")

Date = Annotated[
    datetime, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"], help="UTC")
]


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("feast", "great_expectations", "urllib3", "httpx", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings():
    from titanovax.settings import PlatformSettings

    return PlatformSettings()


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _symbols(symbol: str | None) -> list[str]:
    return [symbol] if symbol else _settings().symbols


@app.command()
def ingest(
    start: Date,
    end: Date,
    symbol: Annotated[str | None, typer.Option(help="Default: TX_SYMBOLS")] = None,
) -> None:
    """Stage the bars of [start, end) from the MT5 gateway (server time → UTC)."""
    from feature_repo.pipeline.ingest import ingest as run

    s = _settings()
    _echo([run(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict() for sym in _symbols(symbol)])


@app.command()
def validate(start: Date, end: Date, symbol: Annotated[str | None, typer.Option()] = None) -> None:
    """Validate staged bars with Great Expectations: pass → lake (soft flags beside it), hard
    failure → quarantine (exit 1). Severities: TX_VALIDATION_SEVERITY / TX_VALIDATION_CONFIG."""
    from feature_repo.pipeline.validate import QuarantinedSymbols, validate_symbols

    s = _settings()
    try:
        _echo(validate_symbols(s, _symbols(symbol), s.timeframe, _utc(start), _utc(end)))
    except QuarantinedSymbols as exc:
        _echo([r.to_dict() for r in exc.reports])
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


# --- data: the validation quarantine (validation helper) ---------------------------------------
data_app = typer.Typer(
    help="The bar lake's quarantine: list and release validated batches.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


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
    """Compute offline features of [start, end) from the lake."""
    from feature_repo.pipeline.store import build_features

    s = _settings()
    _echo(
        [
            build_features(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict()
            for sym in _symbols(symbol)
        ]
    )


@features_app.command("materialize")
def features_materialize(start: Date, end: Date) -> None:
    """Materialise offline features of bars closing in the interval into Redis."""
    from feature_repo.pipeline.store import materialize

    s = _settings()
    materialize(s, _utc(start), _utc(end), s.timeframe)
    typer.echo("materialised")


@features_app.command("stream")
def features_stream(
    writer: Annotated[
        str,
        typer.Option(
            help="direct (Feast's Redis format, one round trip) or feast (write_to_online_store)"
        ),
    ] = "direct",
    max_bars: Annotated[
        int | None, typer.Option(help="Stop after this many bar closes (default: run until Ctrl-C)")
    ] = None,
    wait_s: Annotated[
        float, typer.Option(help="Seconds to wait after a close for every symbol's bar")
    ] = 5.0,
) -> None:
    """Streaming pusher: on each closed bar of the configured terminal, compute that bar's
    features (every view, every symbol) and write them to Redis."""
    import time

    import numpy as np

    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    s = _settings()
    pusher = FeaturePusher(s, open_platform_terminal(s), writer=writer)

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
        f"streaming {s.symbols} {s.timeframe} features to {s.redis_url} ({writer} writer); Ctrl-C stops"
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
    service: Annotated[
        str, typer.Option(help="Feast feature service: trend_v1 or trend_v2")
    ] = "trend_v2",
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
    df = historical_features(s, service, syms, _utc(start), _utc(end))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    _echo(
        {
            "rows": len(df),
            "columns": len(df.columns),
            "symbols": syms,
            "service": service,
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


@app.command()
def backfill(start: Date, end: Date) -> None:
    """Run ingest → validate → features for every day of [start, end), then materialise."""
    from feature_repo.pipeline.backfill import backfill as run

    run(_settings(), _utc(start), _utc(end))
    typer.echo("backfilled")


# --- training: train / tune / promote / models / report (owner: training) ----------------------
models_app = typer.Typer(
    help="Registry aliases: champion / previous / challenger, audited.", no_args_is_help=True
)
report_app = typer.Typer(help="Reports.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(report_app, name="report")
AsOf = Annotated[
    datetime | None,
    typer.Option(
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"],
        help="UTC end of the test window (omit for configs with explicit ranges)",
    ),
]


@app.command()
def train(
    as_of: AsOf = None,
    experiment: str = "trend_v1",
    study: Annotated[
        str | None,
        typer.Option(
            help="Use the best parameters of this Optuna study (and of <study>-transformer for an ensemble)"
        ),
    ] = None,
) -> None:
    """Build the point-in-time dataset, train, backtest, export ONNX (parity-checked) and register."""
    from training.config import load_config
    from training.train import build_training_dataset, train_and_register

    s, cfg = _settings(), load_config(experiment)
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


@app.command()
def tune(
    as_of: AsOf = None,
    experiment: str = "trend_v1",
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
    from training.config import load_config
    from training.train import build_training_dataset
    from training.tune import tune as run

    s, cfg = _settings(), load_config(experiment)
    when = _utc(as_of) if as_of else None
    path = build_training_dataset(s, cfg, when)
    _echo(run(s, cfg, path, when, workers=workers, n_trials=trials, study_name=study).to_dict())


@app.command()
def promote(
    version: str, actor: Annotated[str | None, typer.Option(help="Who (default user@host)")] = None
) -> None:
    """Run the promotion gate for a registered version; passing moves `champion` (audited)."""
    from training.gate import promote as gate
    from training.registry import notify_serving

    s = _settings()
    decision = gate(s, version, actor=actor)
    _echo(decision.to_dict())
    if not decision.promoted:
        raise typer.Exit(1)
    typer.echo(notify_serving(s))


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
    typer.echo(notify_serving(s))


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
) -> None:
    """Out-of-sample after-cost results per real export, with CIs and baselines.

    Each file is ingested, validated and featurised into $TX_HOME/real_exports/<file>/,
    reused while unchanged. Datasets come from Feast get_historical_features."""
    from pathlib import Path

    from titanovax.settings import PROJECT_ROOT
    from training.real_exports import real_exports_report

    raw_dir = Path(raw) if raw else PROJECT_ROOT.parent / "shared" / "data" / "raw"
    only_list = [o for o in only.split(",") if o] or None
    text = real_exports_report(
        raw_dir, Path(out), Path(config) if config else None, only_list, _settings()
    )
    typer.echo(text)


@app.command()
def serve(
    port: Annotated[int, typer.Option(envvar="TX_SERVING_PORT")] = 3000,
    host: Annotated[str, typer.Option(envvar="TX_SERVING_HOST")] = "127.0.0.1",
) -> None:
    """Import `champion` (and `challenger`, scored in shadow) from MLflow into BentoML and serve
    POST /v1/predict over HTTP with TX_SERVING_TOKEN; aliases are polled for hot reload
    (Ctrl-C stops)."""
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
        stop_server(proc)


@engine_app.command("run")
def engine_run(
    mode: Annotated[
        str,
        typer.Option(
            help="live (native/bridge terminal) | paper (simulated terminal, wall clock) | backtest (simulated terminal and clock); default TX_ENGINE_MODE"
        ),
    ] = "",
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
        mode or None,
        start_utc=int(_utc(start).timestamp()) if start else None,
        end_utc=int(_utc(end).timestamp()) if end else None,
        feature_names=[f for f in features.split(",") if f],
    )
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def demo(
    history_days: Annotated[
        int, typer.Option(help="Days of history for features and training")
    ] = 30,
    experiment: str = "trend_v1",
) -> None:
    """Run everything end to end on embedded defaults and print a summary."""
    from titanovax.demo import run_demo

    typer.echo(run_demo(history_days=history_days, experiment=experiment).render())


# --- MT5 gateway (owner: MT5 gateway) -------------------------------------------------------------
mt5_app = typer.Typer(
    help="MT5 gateway: broker time check, symbol metadata, a simulated bridge.",
    no_args_is_help=True,
)
app.add_typer(mt5_app, name="mt5")


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
) -> None:
    """Serve the simulated terminal as an mt5linux bridge (for TX_MT5_MODE=bridge without MT5)."""
    from engine.mt5.simserver import main

    args = ["--host", host, "--port", str(port), "--seed", str(seed)]
    main(args + (["--clock-file", clock_file] if clock_file else []))


if __name__ == "__main__":
    app()
