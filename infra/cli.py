"""``tx``: one command per stage. Each calls the same function the DAG task calls."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Annotated

import typer

app = typer.Typer(help="TitanovaX: MT5 bars → validated lake → Feast/Redis → ONNX model → BentoML → engine.", no_args_is_help=True)
features_app = typer.Typer(
    help="Feast feature repo: apply, build, materialise, stream, get (point-in-time), catalog, env.", no_args_is_help=True
)
engine_app = typer.Typer(help="The live engine.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(engine_app, name="engine")

Date = Annotated[datetime, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"], help="UTC")]


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("feast", "great_expectations", "urllib3", "httpx", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings():
    from infra.settings import PlatformSettings

    return PlatformSettings()


def _echo(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _symbols(symbol: str | None) -> list[str]:
    return [symbol] if symbol else _settings().symbols


@app.command()
def ingest(start: Date, end: Date, symbol: Annotated[str | None, typer.Option(help="Default: TX_SYMBOLS")] = None) -> None:
    """Stage the bars of [start, end) from the MT5 gateway (server time → UTC)."""
    from feature_repo.pipeline.ingest import ingest as run

    s = _settings()
    _echo([run(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict() for sym in _symbols(symbol)])


@app.command()
def validate(start: Date, end: Date, symbol: Annotated[str | None, typer.Option()] = None) -> None:
    """Validate staged bars with Great Expectations: pass → lake, fail → quarantine (exit 1)."""
    from feature_repo.pipeline.validate import BatchQuarantined, validate_interval

    s = _settings()
    try:
        _echo([validate_interval(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict() for sym in _symbols(symbol)])
    except BatchQuarantined as exc:
        _echo(exc.report.to_dict())
        typer.echo(f"error: {exc}", err=True)
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
def features_build(start: Date, end: Date, symbol: Annotated[str | None, typer.Option()] = None) -> None:
    """Compute offline features of [start, end) from the lake."""
    from feature_repo.pipeline.store import build_features

    s = _settings()
    _echo([build_features(s, sym, s.timeframe, _utc(start), _utc(end)).to_dict() for sym in _symbols(symbol)])


@features_app.command("materialize")
def features_materialize(start: Date, end: Date) -> None:
    """Materialise offline features of bars closing in the interval into Redis."""
    from feature_repo.pipeline.store import materialize

    s = _settings()
    materialize(s, _utc(start), _utc(end), s.timeframe)
    typer.echo("materialised")


@features_app.command("stream")
def features_stream(
    writer: Annotated[str, typer.Option(help="direct (Feast's Redis format, one round trip) or feast (write_to_online_store)")] = "direct",
    max_bars: Annotated[int | None, typer.Option(help="Stop after this many bar closes (default: run until Ctrl-C)")] = None,
    wait_s: Annotated[float, typer.Option(help="Seconds to wait after a close for every symbol's bar")] = 5.0,
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
            datetime.fromtimestamp(close, UTC).isoformat(), len(rows), lag_ms, pusher.stats.compute_s[-1] * 1e3,
        )

    typer.echo(f"streaming {s.symbols} {s.timeframe} features to {s.redis_url} ({writer} writer); Ctrl-C stops")
    try:
        pusher.run(max_bars=max_bars, wait_s=wait_s, on_push=report)
    except KeyboardInterrupt:
        typer.echo("stopped")
    total = np.array(pusher.stats.fetch_s) + np.array(pusher.stats.compute_s) + np.array(pusher.stats.write_s)
    if len(total):
        typer.echo(f"pushed {pusher.pushed} rows; per bar p50 {np.percentile(total, 50) * 1e3:.1f} ms p99 {np.percentile(total, 99) * 1e3:.1f} ms")


@features_app.command("get")
def features_get(
    start: Date,
    end: Date,
    out: Annotated[str, typer.Option(help="Output parquet file")],
    service: Annotated[str, typer.Option(help="Feast feature service: trend_v1 or trend_v2")] = "trend_v2",
    symbols: Annotated[str | None, typer.Option(help="Comma-separated (default: TX_SYMBOLS)")] = None,
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
    _echo({"rows": len(df), "columns": len(df.columns), "symbols": syms, "service": service, "out": out})


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
    typer.echo(f"{'seq':20s} {'sequence':13s} {SEQ_WARMUP_BARS:4d}  v2     {SEQ_LEN} bars x ({', '.join(SEQ_CHANNELS)}), float32")


@app.command()
def backfill(start: Date, end: Date) -> None:
    """Run ingest → validate → features for every day of [start, end), then materialise."""
    from feature_repo.pipeline.backfill import backfill as run

    run(_settings(), _utc(start), _utc(end))
    typer.echo("backfilled")


@app.command()
def train(
    as_of: Annotated[datetime, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="UTC end of the test window")],
    experiment: str = "trend_v1",
) -> None:
    """Build the point-in-time dataset, train, export ONNX (parity-checked) and register."""
    from training.config import load_config
    from training.train import build_training_dataset, train_and_register

    s, cfg = _settings(), load_config(experiment)
    path = build_training_dataset(s, cfg, _utc(as_of))
    _echo(train_and_register(s, cfg, path, _utc(as_of)).to_dict())


@app.command()
def promote(version: str) -> None:
    """Run the promotion gate for a registered version; passing moves the `champion` alias."""
    from training.train import promote as gate

    decision = gate(_settings(), version)
    _echo(decision.to_dict())
    if not decision.promoted:
        raise typer.Exit(1)


@app.command()
def serve(
    port: Annotated[int, typer.Option(envvar="TX_SERVING_PORT")] = 3000,
    host: Annotated[str, typer.Option(envvar="TX_SERVING_HOST")] = "127.0.0.1",
) -> None:
    """Import the `champion` from MLflow into BentoML and serve it over HTTP (Ctrl-C stops)."""
    from serving.importer import import_from_registry
    from serving.server import start_server, stop_server, wait_ready

    s = _settings()
    os.environ.setdefault("BENTOML_HOME", str(s.home / "bentoml"))
    imported = import_from_registry(s.tracking_uri, s.model_name, "champion")
    proc = start_server(host=host, port=port, model_tag=imported.bentoml_tag, bentoml_home=os.environ["BENTOML_HOME"], log_path=s.home / "logs" / "serving.log")
    try:
        wait_ready(f"http://{host}:{port}", 120)
        typer.echo(f"serving {imported.bentoml_tag} (MLflow v{imported.mlflow_version}) at http://{host}:{port}/predict")
        proc.wait()
    except KeyboardInterrupt:
        typer.echo("stopping the server")
    finally:
        stop_server(proc)


@engine_app.command("run")
def engine_run(
    mode: Annotated[str, typer.Option(help="live (native/bridge terminal) | paper (simulated terminal, wall clock) | backtest (simulated terminal and clock); default TX_ENGINE_MODE")] = "",
    start: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="backtest: first bar close (UTC)")] = None,
    end: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="backtest: last bar close (UTC)")] = None,
    features: Annotated[str, typer.Option(help="Comma-separated feature names (the bundle's order); default: the bundle's manifest, else trend_v1")] = "",
) -> None:
    """Run the engine: the same code in live, paper and backtest mode (control API when TX_ENGINE_TOKEN is set)."""
    from infra.engine_world import run_engine

    out = run_engine(
        mode or None,
        start_utc=int(_utc(start).timestamp()) if start else None,
        end_utc=int(_utc(end).timestamp()) if end else None,
        feature_names=[f for f in features.split(",") if f],
    )
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command()
def demo(
    history_days: Annotated[int, typer.Option(help="Days of history for features and training")] = 30,
    experiment: str = "trend_v1",
) -> None:
    """Run everything end to end on embedded defaults and print a summary."""
    from infra.demo import run_demo

    typer.echo(run_demo(history_days=history_days, experiment=experiment).render())


if __name__ == "__main__":
    app()
