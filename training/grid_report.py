"""The grid strategy on the real MT5 exports, after costs, beside the baselines
(``python -m training.grid_report --out reports/grid-real-exports.md``).

For each file of ``training/configs/real_exports_v1.yaml`` present in the raw folder, on the
file's test range ``[test_start, end]`` (server time, as in the real-export report; the
strategy's warm-up bars come from just before ``test_start``):

* **vectorised** — :func:`training.grid_backtest.simulate_grid` +
  :func:`training.grid_backtest.grid_metrics`: net return after the cost model of the
  real-export report (each bar's half spread per unit traded, commission, ``k_s`` x spread +
  ``k_v`` x recent volatility slippage), position 1.0 = the grid fully loaded; baselines
  (always flat, buy & hold, momentum) on the same bars and costs;
* **engine** — :func:`training.grid_backtest.run_engine_grid`: the same bars through the
  engine (strategy ``grid``, simulated terminal: spread only, no slippage), with its orders,
  final equity and the vectorised account-currency result next to it.

The files are read (never copied) from the raw folder. Numbers are reported as they come out.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
import yaml

from engine.config import GridConfig, GridLimits
from titanovax.settings import PROJECT_ROOT
from training.config import CONFIG_DIR

log = logging.getLogger(__name__)

REPORT_GRID = GridConfig()
"""The grid of the report: the settings' defaults (``TX_GRID_*``), not tuned on these files."""
REPORT_LIMITS = GridLimits()
MODES = ("flatten", "reverse", "stop_adding")
BALANCE = 10_000.0
RAW_DIR = PROJECT_ROOT.parent / "shared" / "data" / "raw"
OUT = Path("reports/grid-real-exports.md")

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0] if __doc__ else None)


def range_bars(raw_dir: Path, entry: dict[str, Any], warmup: int) -> tuple[str, str, np.ndarray]:
    """``(symbol, timeframe, rates)`` of the file's test range plus ``warmup`` bars before."""
    from engine.mt5.exports import read_export

    e = read_export(raw_dir / entry["file"])
    t = e.rates["time"].astype(np.int64)
    start = int(pd.Timestamp(entry["test_start"], tz="UTC").timestamp())
    end = int(pd.Timestamp(entry["end"], tz="UTC").timestamp())
    i0 = int(np.searchsorted(t, start, "left"))
    i1 = int(np.searchsorted(t, end, "right"))
    return e.symbol, e.timeframe, e.rates[max(0, i0 - warmup) : i1].copy()


def evaluate(
    raw_dir: Path,
    entry: dict[str, Any],
    spec: dict[str, Any],
    *,
    modes: tuple[str, ...] = MODES,
    engine: bool = True,
    n_boot: int = 300,
) -> dict[str, Any]:
    """Grid (each reverse mode) and baselines of one file."""
    from training.backtest import Costs, SpreadVolSlippage
    from training.grid_backtest import grid_metrics, run_engine_grid, simulate_grid

    symbol, tf, rates = range_bars(raw_dir, entry, REPORT_GRID.bars_needed - 1)
    costs = Costs(
        commission=float(spec["commission"]),
        slippage=SpreadVolSlippage(float(spec["slippage_spread_k"]), float(spec["slippage_vol_k"])),
    )
    out: dict[str, Any] = {"file": entry["file"], "symbol": symbol, "timeframe": tf, "grids": {}}
    base: dict[str, dict[str, float]] = {}
    for mode in modes:
        cfg = replace(REPORT_GRID, reverse_mode=mode)  # type: ignore[arg-type]
        run = simulate_grid(rates, symbol, tf, cfg, REPORT_LIMITS, balance=BALANCE)
        m, base = grid_metrics(rates, run, symbol, tf, cfg, costs, n_boot=n_boot)
        row: dict[str, Any] = {
            "metrics": m,
            "orders": run.orders,
            "usd": run.final_equity - BALANCE,
            "actions": run.counts(),
        }
        if engine:
            res = run_engine_grid(rates, symbol, tf, cfg, REPORT_LIMITS, balance=BALANCE)
            row["engine"] = {
                "orders": res.orders,
                "usd": res.equity - BALANCE,
                "seconds": res.seconds,
                "decisions": res.decisions,
                "refusals": res.refusals,
            }
        out["grids"][mode] = row
        log.info("%s %s %s: %s", symbol, tf, mode, row.get("engine", {}))
    out["baselines"] = base
    out["test_bars"] = int(m["bars"])
    first = pd.Timestamp(int(rates["time"][REPORT_GRID.bars_needed - 1]), unit="s")
    out["range"] = (
        f"{first:%Y-%m-%d}",
        f"{pd.Timestamp(int(rates['time'][-1]), unit='s'):%Y-%m-%d}",
    )
    return out


def _ci(m: dict[str, float], key: str, scale: float = 1.0) -> str:
    lo, hi = m.get(f"{key}_ci_low", float("nan")), m.get(f"{key}_ci_high", float("nan"))
    return f"{m[key] * scale:+.2f} [{lo * scale:+.2f}, {hi * scale:+.2f}]"


_LABELS = {"flat": "always flat", "buy_and_hold": "buy & hold", "momentum": "momentum (24 bars)"}


def render(results: list[dict[str, Any]], spec: dict[str, Any], raw_dir: Path) -> str:
    g = REPORT_GRID
    lines = [
        "# Grid strategy on the real MT5 exports, after costs",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m training.grid_report` from "
        f"`{raw_dir}` (files read in place) on each file's test range of "
        "`training/configs/real_exports_v1.yaml` (server time; the same ranges as "
        "[the real-export report](real_exports.md), without its lake validation, so bar counts differ slightly).",
        "",
        f"Grid (the `TX_GRID_*` defaults, not tuned here): spacing {g.spacing_atr:g} ATR({g.atr_period}) widened by "
        f"max(1, ATR / ATR({g.vol_window}))^{g.vol_widen:g}, at most {g.max_levels} levels of {g.lots:g} lots x "
        f"{g.lot_multiplier:g}^n, basket take-profit {g.basket_tp_atr:g} ATR per lot, no basket stop of its own; "
        f"direction `{g.direction}`: a grid starts in the trend filter's direction (EMA({g.trend_period}) slope over "
        f"{g.trend_slope_bars} bars >= {g.trend_threshold:g} ATR). Risk caps: {REPORT_LIMITS.max_lots:g} grid lots, "
        f"{REPORT_LIMITS.max_levels} levels, basket loss {REPORT_LIMITS.max_basket_drawdown:.0%} of equity "
        f"(account {BALANCE:,.0f} USD); the account-level halts (daily loss, drawdown, loss streak) and the spread and "
        "order-rate rules are off in both backtests (`training.grid_backtest.BACKTEST_LIMITS`). One row per "
        "`reverse_mode` (what the grid does when the trend turns against it).",
        "",
        "**Vectorised** (net % [90 % CI], Sharpe, …): the grid's lots as a position where 1.0 = the grid fully "
        f"loaded ({g.max_levels} levels), through `training.backtest` with the real-export report's costs — half the bar's "
        f"spread per unit traded, commission {spec['commission']}, slippage {spec['slippage_spread_k']}×spread + "
        f"{spec['slippage_vol_k']}×recent volatility — beside the baselines on the same bars and costs. "
        "**Engine**: the same bars through the engine (strategy `grid`, simulated terminal, spread paid, "
        "no slippage), its orders and account result in USD, next to the vectorised account result (same "
        "fills as the terminal); the two must agree (tests/unit/test_grid.py). Numbers as they came out.",
        "",
        "| symbol | TF | test range | bars | strategy | net % [90 % CI] | Sharpe [90 % CI] | max DD % | trades | PF | exposure | engine orders / vectorised | engine USD / vectorised USD |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        head = f"| {r['symbol']} | {r['timeframe']} | {r['range'][0]} → {r['range'][1]} | {r['test_bars']} "
        for mode, row in r["grids"].items():
            m = row["metrics"]
            e = row.get("engine")
            eng_o = f"{e['orders']} / {row['orders']}" if e else f"— / {row['orders']}"
            eng_u = f"{e['usd']:+.2f} / {row['usd']:+.2f}" if e else f"— / {row['usd']:+.2f}"
            lines.append(
                f"{head}| grid, reverse_mode={mode} | {_ci(m, 'net_return', 100)} | {_ci(m, 'sharpe')} "
                f"| {m['max_drawdown'] * 100:.2f} | {m['trades']:.0f} | {m['profit_factor']:.2f} "
                f"| {m['exposure']:.2f} | {eng_o} | {eng_u} |"
            )
        for b, m in r["baselines"].items():
            lines.append(
                f"{head}| {_LABELS[b]} | {_ci(m, 'net_return', 100)} | {_ci(m, 'sharpe')} "
                f"| {m['max_drawdown'] * 100:.2f} | {m['trades']:.0f} | {m['profit_factor']:.2f} "
                f"| {m['exposure']:.2f} | — | — |"
            )
    lines += [
        "",
        "Grid actions (vectorised; the engine journals the same, each with its reason):",
        "",
        "| symbol | TF | reverse_mode | actions |",
        "|---|---|---|---|",
    ]
    for r in results:
        for mode, row in r["grids"].items():
            acts = ", ".join(f"{k} {v}" for k, v in sorted(row["actions"].items()))
            lines.append(f"| {r['symbol']} | {r['timeframe']} | {mode} | {acts} |")
    lines.append("")
    return "\n".join(lines)


def grid_report(
    raw_dir: Path,
    out: Path | None = None,
    only: list[str] | None = None,
    *,
    engine: bool = True,
    n_boot: int = 300,
) -> str:
    """Evaluate the configured files present in ``raw_dir``; write the markdown to ``out``."""
    spec = yaml.safe_load((CONFIG_DIR / "real_exports_v1.yaml").read_text())
    entries = [e for e in spec["files"] if not only or any(o in e["file"] for o in only)]
    results = []
    for entry in entries:
        if not (raw_dir / entry["file"]).is_file():
            log.warning("%s not in %s: skipped", entry["file"], raw_dir)
            continue
        results.append(evaluate(raw_dir, entry, spec, engine=engine, n_boot=n_boot))
    if not results:
        raise FileNotFoundError(f"none of the configured exports is in {raw_dir}")
    text = render(results, spec, raw_dir)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


@app.command()
def main(
    raw_dir: Annotated[Path, typer.Option(help="folder of the MT5 exports")] = RAW_DIR,
    out: Annotated[Path, typer.Option(help="markdown to write")] = OUT,
    only: Annotated[
        list[str] | None, typer.Option(help="only files whose name contains this (repeatable)")
    ] = None,
    engine: Annotated[bool, typer.Option(help="also replay through the engine")] = True,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples of the CIs")] = 300,
) -> None:
    """Backtest the grid on the real exports (vectorised and through the engine)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("engine.mt5.sim").setLevel(logging.WARNING)  # one line per fill otherwise
    try:
        grid_report(raw_dir, out, only or None, engine=engine, n_boot=n_boot)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
