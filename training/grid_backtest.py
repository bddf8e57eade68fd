"""The grid strategy backtested two ways on the same bars: vectorised, and through the engine.

* :func:`simulate_grid` runs :class:`engine.grid.GridStrategy` over an array of bars (the
  strategy is path dependent, so this is one pass over the bars with numpy per bar, not a
  matrix expression) under the same risk caps the engine enforces
  (:func:`engine.risk.check_grid_add`, :func:`engine.risk.check_grid_basket`,
  :func:`engine.risk.check_order`), with fills as the simulated terminal makes them: buys at
  ``ask = close + spread``, sells at ``bid = close``, no order when no bar follows (the
  terminal's market is closed then). It gives the grid's signed lots after every bar, every
  action with its reason, and the account-currency P&L.
* :func:`grid_metrics` turns those lots into positions for :func:`training.backtest.pnl_frame`
  (1.0 = the grid fully loaded: every level of ``max_levels`` open), so the grid is measured
  after costs with the very cost model of the model backtests (half the bar's spread per unit
  traded, commission, ``SpreadVolSlippage``) beside the baselines.
* :func:`run_engine_grid` replays the same bars through :class:`engine.loop.Engine` (strategy
  ``grid``, simulated terminal over the export, journal in a file): the engine's own order
  path, risk layer and journal.

``tests/unit/test_grid_backtest.py`` checks that the two agree on the same bars.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import GridConfig, GridLimits, RiskLimits
from engine.grid import GridAction, GridStrategy, market_signals
from engine.mt5 import timeframe_seconds
from engine.mt5.synthetic import SymbolSpec, symbol_spec
from engine.risk import RiskState, Verdict, check_grid_add, check_grid_basket, check_order
from engine.sizing import round_volume

BACKTEST_LIMITS = RiskLimits(
    max_position_lots=100.0,
    max_total_lots=100.0,
    daily_loss_limit=0.0,
    max_drawdown=0.0,
    max_orders_per_minute=0,
    max_consecutive_losses=0,
    max_feature_age_s=0.0,
    max_spread_points=0.0,
    max_tick_age_s=0.0,
)
"""Engine risk limits of a grid backtest: the grid's own caps (``GridLimits``) apply, the
account-level halts (daily loss, drawdown, loss streak) and spread/rate rules are off, as the
vectorised backtest has no trading-state machine."""


@dataclass
class GridRun:
    """What :func:`simulate_grid` did."""

    lots: np.ndarray  # signed grid lots held after each bar's decision
    equity: np.ndarray  # account equity at each bar's close (after its decision)
    actions: list[dict[str, Any]] = field(default_factory=list)
    orders: int = 0
    balance: float = 0.0
    start: int = 0  # index of the first decided bar

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.balance

    def counts(self) -> dict[str, int]:
        """Actions by ``kind:reason`` (refusals as ``refused:<reason code>``)."""
        out: dict[str, int] = {}
        for a in self.actions:
            key = f"refused:{a['refusal']}" if a.get("refusal") else f"{a['kind']}:{a['reason']}"
            out[key] = out.get(key, 0) + 1
        return out


def _usd(spec: SymbolSpec, amount: float, price: float) -> float:
    """Account (USD) value of ``amount`` in the symbol's profit currency, as the simulated
    terminal converts it when the symbol is its own USD rate."""
    if spec.currency_profit == "USD":
        return amount
    if spec.currency_base == "USD":
        return amount / price
    raise ValueError(f"{spec.name}: profit in {spec.currency_profit} has no USD rate here")


def simulate_grid(
    rates: np.ndarray,
    symbol: str,
    timeframe: str,
    cfg: GridConfig,
    limits: GridLimits,
    *,
    risk_limits: RiskLimits = BACKTEST_LIMITS,
    balance: float = 10_000.0,
    digits: int | None = None,
) -> GridRun:
    """The grid over ``rates`` (MT5 rates, oldest first), decided at every bar close from
    ``cfg.bars_needed - 1`` on."""
    spec = symbol_spec(symbol, digits)
    step = timeframe_seconds(timeframe)
    n = len(rates)
    t = rates["time"].astype(np.int64)
    close = rates["close"].astype(float)
    ask = np.round(close + rates["spread"].astype(float) * spec.point, spec.digits)
    tradable = np.zeros(n, dtype=bool)
    tradable[:-1] = t[1:] == t[:-1] + step  # the terminal's market is open: a bar follows
    g = GridStrategy(cfg)
    st = g.state
    start = cfg.bars_needed - 1
    lots = np.zeros(n)
    equity = np.full(n, balance)
    run = GridRun(lots, equity, balance=balance, start=start)
    bal = balance
    for i in range(start, n):

        def floating(i: int = i) -> float:
            mark = close[i] if st.direction > 0 else ask[i]
            return _usd(spec, st.pnl_price(mark) * spec.contract_size, close[i])

        basket = floating() if st.open else 0.0
        sig = market_signals(rates[i - start : i + 1], cfg)
        actions = g.on_bar(
            close=sig.close,
            atr=sig.atr,
            trend=sig.trend,
            vol_ratio=sig.vol_ratio,
            basket_money=basket if st.open else None,
        )
        if st.open and not any(a.kind == "close_all" for a in actions):
            vb = check_grid_basket(limits, basket_pnl=basket, equity=bal + basket)
            if not vb.allowed:
                actions = [GridAction("close_all", str(vb.reason), vb.detail)]
        for a in actions:
            row: dict[str, Any] = {"bar": int(t[i]), "kind": a.kind, "reason": a.reason}
            run.actions.append(row)
            if a.kind in ("stop_adding", "resume_adding"):
                g.apply(a)
                continue
            net = st.direction * st.lots
            v: Verdict | None
            if a.kind == "close_all":
                v = check_order(
                    risk_limits,
                    RiskState(),
                    current_lots=net,
                    target_lots=0.0,
                    spread_points=float(rates["spread"][i]),
                    new_orders=len(st.levels),
                )
                if not v.allowed:
                    row["refusal"] = str(v.reason)
                    break
                if not tradable[i]:
                    row["failed"] = "market_closed"
                    break
                exit_px = close[i] if st.direction > 0 else ask[i]
                bal += round(
                    sum(
                        round(
                            _usd(
                                spec,
                                st.direction * (exit_px - lv.price) * lv.lots * spec.contract_size,
                                close[i],
                            ),
                            2,
                        )
                        for lv in st.levels
                    ),
                    2,
                )
                run.orders += len(st.levels)
                g.apply(a)
                continue
            vol = round_volume(a.lots, spec.volume_min, spec.volume_step, spec.volume_max)
            levels, grid_lots = (0, 0.0) if a.kind == "open" else (len(st.levels), st.lots)
            v = (
                check_grid_add(limits, levels=levels, grid_lots=grid_lots, add_lots=vol)
                if vol > 0
                else None
            )
            if v is not None and v.allowed:
                v = check_order(
                    risk_limits,
                    RiskState(),
                    current_lots=net,
                    target_lots=round(net + a.direction * vol, 8),
                    spread_points=float(rates["spread"][i]),
                )
            if v is None or not v.allowed:
                row["refusal"] = str(v.reason) if v is not None else "size_below_min"
                continue
            if not tradable[i]:
                row["failed"] = "market_closed"
                break
            px = ask[i] if a.direction > 0 else close[i]
            g.apply(a, price=float(px), time=int(t[i]), lots=vol)
            run.orders += 1
        lots[i] = st.direction * st.lots
        equity[i] = bal + (floating() if st.open else 0.0)
    run.balance = bal
    return run


def bars_frame(rates: np.ndarray, symbol: str, digits: int | None = None) -> pd.DataFrame:
    """The dataset columns :func:`training.backtest.pnl_frame` and the baselines read:
    ``ret_next = log(close[t+1] / close[t])`` and ``spread_ret = spread * point / close``
    (the last bar, without a next one, is left out)."""
    spec = symbol_spec(symbol, digits)
    close = rates["close"].astype(float)
    return pd.DataFrame(
        {
            "symbol": symbol,
            "event_timestamp": pd.to_datetime(
                rates["time"][:-1].astype(np.int64), unit="s", utc=True
            ),
            "ret_next": np.diff(np.log(close)),
            "spread_ret": rates["spread"][:-1].astype(float) * spec.point / close[:-1],
        }
    )


def full_grid_lots(cfg: GridConfig) -> float:
    """Lots of a fully loaded grid (every level open): the position unit of :func:`grid_metrics`."""
    return sum(cfg.lots * cfg.lot_multiplier**k for k in range(cfg.max_levels))


def grid_metrics(
    rates: np.ndarray,
    run: GridRun,
    symbol: str,
    timeframe: str,
    cfg: GridConfig,
    costs: Any,
    *,
    n_boot: int = 300,
    digits: int | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """After-cost metrics of the grid and of the baselines on the decided bars (same costs)."""
    from training.backtest import backtest, baselines

    ds = bars_frame(rates, symbol, digits).iloc[run.start :].reset_index(drop=True)
    pos = run.lots[run.start : len(rates) - 1] / full_grid_lots(cfg)
    m = backtest(ds, pos, timeframe, costs, n_boot=n_boot)
    return m, baselines(ds, timeframe, costs, n_boot=n_boot)


@dataclass
class EngineGridResult:
    """What the engine's replay of the grid did."""

    decisions: int
    counts: dict[str, int]
    refusals: dict[str, int]
    orders: int
    balance: float
    equity: float
    seconds: float
    actions: dict[str, int]


def run_engine_grid(
    rates: np.ndarray,
    symbol: str,
    timeframe: str,
    cfg: GridConfig,
    limits: GridLimits,
    *,
    risk_limits: RiskLimits = BACKTEST_LIMITS,
    balance: float = 10_000.0,
    digits: int | None = None,
    journal_path: Path | None = None,
) -> EngineGridResult:
    """Replay ``rates`` (server time = UTC here: the grid has no clock rule) through the
    engine with strategy ``grid`` on a simulated terminal; decisions from the same first bar
    as :func:`simulate_grid`."""
    import json
    import time

    from engine.backtest import ArrayFeatureSource, bar_closes
    from engine.config import ExecutionConfig
    from engine.grid import GridRunner, NoModel
    from engine.journal import Journal
    from engine.loop import Engine
    from engine.mt5 import TIMEFRAMES
    from engine.mt5.exports import Export
    from engine.mt5.sim import ExportFeed, SimulatedTerminal

    step = timeframe_seconds(timeframe)
    dg = digits if digits is not None else symbol_spec(symbol).digits
    feed = ExportFeed(
        [Export(symbol, timeframe, rates, Path(f"{symbol}_{timeframe}.csv"), digits=dg)],
        server_utc_offset_hours=0,
    )
    first = int(rates["time"][cfg.bars_needed - 1]) + step
    end = int(rates["time"][-1]) + step
    now = [end]
    term = SimulatedTerminal(feed, clock=lambda: now[0], server_utc_offset_hours=0, balance=balance)
    term.initialize()
    tf = TIMEFRAMES[timeframe]
    closes = bar_closes(term, [symbol], tf, first - 1, end, 0)
    with tempfile.TemporaryDirectory() as tmp:
        jp = journal_path or Path(tmp) / "grid.sqlite"
        engine = Engine(
            terminal=term,
            features=ArrayFeatureSource([], {}, clock=lambda: float(now[0])),
            model=NoModel(),
            journal=Journal(str(jp), durable=False),
            limits=risk_limits,
            magic=4242,
            clock=lambda: float(now[0]),
            execution=ExecutionConfig(max_retries=1, retry_backoff_s=0.0),
            timeframe=tf,
            server_utc_offset_hours=0,
            sleep=lambda s: None,
            mode="backtest",
            explain=False,
            grid=GridRunner(cfg, limits, {symbol: "grid"}),
        )
        t0 = time.perf_counter()
        engine.replay(closes, [symbol], lambda c: now.__setitem__(0, c))
        dt = time.perf_counter() - t0
        actions: dict[str, int] = {}
        for r in engine.journal.rows():
            req = r["order_request"]
            req = json.loads(req) if isinstance(req, str) else req
            for a in ((req or {}).get("grid") or {}).get("actions", []):
                key = (
                    f"refused:{a['refusal'].split(':')[0]}"
                    if a.get("refusal")
                    else f"{a['kind']}:{a['reason']}"
                )
                actions[key] = actions.get(key, 0) + 1
        acct = term.account_info()
        orders = sum(1 for d in term.history_deals_get(0, 2**31) or () if d.magic == 4242)
        res = EngineGridResult(
            decisions=engine.stats.bars,
            counts=engine.journal.counts(),
            refusals=engine.journal.reason_counts(),
            orders=orders,
            balance=float(acct.balance) if acct else math.nan,
            equity=float(acct.equity) if acct else math.nan,
            seconds=dt,
            actions=actions,
        )
        engine.journal.close()
    return res
