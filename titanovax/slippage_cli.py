"""``tx slippage``: the learned slippage model (:mod:`training.slippage`).

* ``tx slippage simulate-fills --n N`` — send N orders through the engine's order path to
  simulated terminals with the state-dependent slippage process on, journaling every fill
  (default journal ``$TX_HOME/slippage/fills.sqlite``).
* ``tx slippage fit`` — fit the quantile model on a journal's fills (``--journal``: a SQLite
  path or a ``postgresql://`` URL, e.g. the engine's), print the held-out calibration against
  the fixed formula, register ``tx_slippage`` and promote it to ``champion`` when the gate
  passes (``--no-promote`` to only register).
* ``tx slippage pull`` — fetch the champion (or a version) into a folder for an engine on
  another host (``TX_ENGINE_SLIPPAGE_MODEL_DIR``); ``fit`` refreshes
  ``$TX_HOME/slippage/champion`` itself when it promotes.
* ``tx slippage show`` — the promoted model's quantiles for one order.

The DAG ``slippage_model`` calls the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

slippage_app = typer.Typer(
    help="Learned slippage: simulate fills, fit the quantile model, show its estimates.",
    no_args_is_help=True,
)


def default_fills_journal(home: Path) -> Path:
    """Where ``simulate-fills`` writes and ``fit`` reads by default."""
    return home / "slippage" / "fills.sqlite"


def _quiet() -> None:
    """Entry-point logging: one line per simulated fill and MLflow's progress bars are noise."""
    import logging
    import os

    logging.getLogger("engine.mt5.sim").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _settings() -> Any:
    from titanovax.settings import PlatformSettings

    return PlatformSettings()


def _redact(target: str) -> str:
    from engine.journal import redact_dsn

    return redact_dsn(target)


@slippage_app.command("simulate-fills")
def simulate_fills_cmd(
    n: Annotated[int, typer.Option("--n", min=1, help="orders to send (each one fills)")] = 10_000,
    journal: Annotated[
        str | None,
        typer.Option(
            help="journal to write (path or postgresql:// URL); default $TX_HOME/slippage/fills.sqlite"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the orders and of the slippage draws")] = 0,
    venues: Annotated[int, typer.Option(min=1, help="simulated venues (terminals)")] = 2,
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="symbols (repeat); default EURUSD")
    ] = None,
) -> None:
    """Journal N fills from the simulated terminal with slippage on, through the engine's
    OrderExecutor (market execution: draws are not censored by requotes)."""
    from training.slippage import simulate_fills

    _quiet()
    target = journal or str(default_fills_journal(_settings().home))
    out = simulate_fills(target, n, seed=seed, venues=venues, symbols=symbol or ["EURUSD"])
    out["journal"] = _redact(str(out["journal"]))
    typer.echo(json.dumps(out, indent=2))


@slippage_app.command("fit")
def fit_cmd(
    journal: Annotated[
        str | None,
        typer.Option(
            help="journal with fills (path or postgresql:// URL); default $TX_HOME/slippage/fills.sqlite"
        ),
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="only this scope's fills (login:magic:mode); default all")
    ] = None,
    holdout: Annotated[float, typer.Option(help="newest share of fills held out")] = 0.25,
    tolerance: Annotated[float, typer.Option(help="gate: allowed |coverage - q|")] = 0.05,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="move champion when the gate passes")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole result as JSON")] = False,
) -> None:
    """Fit the quantile slippage model on journaled fills, evaluate it on the newest ones
    against the fixed formula, register tx_slippage and promote it through the gate."""
    from training.slippage import FitConfig, fit_from_journal

    _quiet()
    s = _settings()
    target = journal or str(default_fills_journal(s.home))
    if "://" not in target and not Path(target).is_file():
        raise typer.BadParameter(f"no journal at {target} (run `tx slippage simulate-fills`)")
    res = fit_from_journal(
        s,
        target,
        FitConfig(holdout=holdout, tolerance=tolerance),
        scope=scope,
        promote_if_passed=promote,
    )
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2, default=str))
        return
    ev = res.evaluation
    typer.echo(
        f"fills: {res.n_train} train, {ev['n_test']} held out (newest), {res.n_excluded} excluded"
    )
    typer.echo("| quantile | coverage | raw coverage | pinball | fixed pinball |")
    typer.echo("|---:|---:|---:|---:|---:|")
    for r in ev["quantiles"]:
        typer.echo(
            f"| {r['q']:g} | {r['coverage']:.3f} | {r['coverage_raw']:.3f} | {r['pinball']:.3f}"
            f" | {r['fixed_pinball']:.3f} |"
        )
    typer.echo(
        f"mean: MAE {ev['mae_mean']:.2f} points (fixed formula {ev['fixed_mae']:.2f}), "
        f"bias {ev['bias_mean']:+.2f} (fixed {ev['fixed_bias']:+.2f})"
    )
    verdict = "promoted to champion" if res.promoted else "not promoted"
    typer.echo(f"tx_slippage v{res.version}: {verdict}: {res.decision['reason']}")


@slippage_app.command("show")
def show_cmd(
    spread: Annotated[float, typer.Option(help="spread, points")] = 11.0,
    vol: Annotated[float, typer.Option(help="recent volatility, points")] = 25.0,
    volume: Annotated[float, typer.Option(help="lots")] = 1.0,
    side: Annotated[str, typer.Option(help="buy or sell")] = "buy",
    hour: Annotated[int, typer.Option(min=0, max=23, help="hour of day, UTC")] = 12,
    venue: Annotated[str, typer.Option(help="venue, e.g. sim:50000001")] = "sim:50000001",
    symbol: Annotated[str, typer.Option(help="symbol")] = "EURUSD",
) -> None:
    """The promoted model's estimate for one order (the fixed formula when none)."""
    from training.slippage import load_champion

    _quiet()
    est = load_champion(_settings())
    order: dict[str, Any] = {
        "symbol": symbol,
        "venue": venue,
        "side": side,
        "volume": volume,
        "spread_points": spread,
        "vol_points": vol,
        "hour": hour,
    }
    out: dict[str, Any] = {"source": getattr(est, "source", "fixed"), "mean": est.points(**order)}
    quantiles = getattr(est, "quantiles", None)
    if quantiles is not None:
        out["quantiles"] = {f"q{k:g}": v for k, v in quantiles(**order).items()}
    typer.echo(json.dumps(out, indent=2))


@slippage_app.command("pull")
def pull_cmd(
    ref: Annotated[str, typer.Argument(help="alias or version")] = "champion",
    out: Annotated[
        Path | None, typer.Option(help="folder; default $TX_HOME/slippage/champion")
    ] = None,
) -> None:
    """Fetch tx_slippage (alias or version) into the folder the engine reads."""
    from training.slippage import pull_champion

    _quiet()
    typer.echo(json.dumps(pull_champion(_settings(), out, ref), indent=2))
