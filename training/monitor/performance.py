"""Live versus expected: is the champion earning, after costs, what its backtest said it would?

**The unit** (``expected_pnl.unit`` = ``log_return_per_bar_unit_position``): the after-cost log
return of a *one-unit* position per bar, averaged over the symbols quoting at that bar — exactly
the backtest's portfolio P&L (:func:`training.backtest.portfolio_pnl`). Sizing (lots) is the
engine's business and is divided out: what is compared is the model's direction.

*Expected* (written at training time, manifest key ``expected_pnl``,
:func:`expected_pnl_from_frame`): the test window's per-bar portfolio P&L after the experiment's
cost model — mean, standard deviation, 5 % / 95 % quantiles, number of bars and the newest
:data:`MAX_SAMPLE_BARS` bars themselves (for a block bootstrap).

*Live* (:func:`live_pnl`), from what the engine's journal really records, per (symbol, bar
close) of the champion (``decisions`` rows with its ``model_version``, in the journal's scope):

* the position held after bar *t*: the sign of ``target_lots`` of a ``sent`` or ``hold`` row
  (``hold`` records the net lots held); a ``refused``/``error`` row keeps the previous one;
* gross: ``position_t * log(close[t+1] / close[t])`` with the closes from the bar lake (the
  journal holds no bar prices) — the backtest's ``ret_next``; a bar whose next bar is not in
  the lake yet is not realised and left out;
* costs: ``|Δposition|`` units traded at the bar, each paying the *realised* cost of the bar's
  fills — ``side * log(fill price / reference)`` from the order results the journal records
  (``price``; reference the fill's own mid when the result carries ``bid``/``ask``, else the
  bar's close, which is a bid close on MT5: a buy then pays the whole spread and a sell none,
  a round trip the spread, as the backtest's ``spread/2`` per unit) — plus half the round-trip
  commission of the manifest's cost model (commission is on the terminal's deals, not in the
  journal); a bar with turnover but no fill price falls back to half the lake bar's spread
  (``spread * point / close``); holding pays the manifest's swap pro rata, as in the backtest.

**The verdicts**, over the newest ``perf_window_bars`` live bars (fewer than ``perf_min_bars``:
``skipped``):

1. *interval*: the live mean per-bar P&L against the ``perf_ci`` interval of the mean of that
   many bars under the backtest: a moving-block bootstrap of the stored test bars (block
   ``√m``, so serial dependence is kept), or the normal interval ``mean ± z·std/√n`` when the
   bundle stored no bars. Below: ``breach``; above: ``warn`` (better than the backtest is also
   a surprise — a cost or sizing bug, or luck);
2. *sequential*: a one-sided CUSUM (Page, 1954) for a downward shift of the mean, on the
   per-bar P&L standardised by the backtest's mean and standard deviation:
   ``S_t = max(0, S_{t-1} - z_t - k)``, alarm when ``S_t > h`` (``cusum_k``, ``cusum_h``).
   It reacts to a sustained shortfall long before the interval of a long window does. Written
   here in a few lines on purpose: the lock has no sequential change detector with a *known*
   reference (river and ruptures are not in it; statsmodels' ``breaks_cusumolsresid`` is a
   retrospective test on OLS residuals with an *estimated* mean, so it cannot test against the
   backtest's mean).

Either verdict failing is ``breach`` with ``evidence.code = "performance_breach"``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.monitor.result import CheckResult
from training.monitor.settings import ModelMonitorSettings

log = logging.getLogger(__name__)

CHECK = "live_vs_expected"
UNIT = "log_return_per_bar_unit_position"
BREACH_CODE = "performance_breach"
MAX_SAMPLE_BARS = 2000
"""Newest test-window bars kept in the manifest (about 20 KB of JSON)."""


def expected_pnl_from_frame(frame: pd.DataFrame, max_bars: int = MAX_SAMPLE_BARS) -> dict[str, Any]:
    """The manifest's ``expected_pnl`` from a backtest's :func:`training.backtest.pnl_frame`."""
    from training.backtest import portfolio_pnl

    p = portfolio_pnl(frame).to_numpy(dtype=float)
    if len(p) == 0:
        raise ValueError("expected_pnl needs at least one backtest bar")
    q05, q95 = np.quantile(p, [0.05, 0.95])
    return {
        "unit": UNIT,
        "per_bar_mean": float(p.mean()),
        "per_bar_std": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
        "q05": float(q05),
        "q95": float(q95),
        "n_bars": len(p),
        "bars": [float(f"{x:.6g}") for x in p[-max_bars:]],
    }


# --- live P&L from the journal ------------------------------------------------------------


def _sign(x: float | None) -> int:
    if x is None or x == 0:
        return 0
    return 1 if x > 0 else -1


def _fills(row: dict[str, Any]) -> list[dict[str, float]]:
    """Executed fills of a decision row: ``price``, ``volume`` and the result's ``bid``/``ask``."""
    out: list[dict[str, float]] = []
    res = row.get("order_result") or {}
    items = list(res.get("results") or [])
    for it in res.get("executed_before_restart") or []:
        if it.get("result"):
            items.append({"status": "done", "attempts": [it["result"]]})
    for r in items:
        if not r or r.get("status") not in ("done", "recovered"):
            continue
        attempts = r.get("attempts") or []
        last = attempts[-1] if attempts else {}
        price = float(last.get("price") or 0.0)
        if price > 0:
            out.append(
                {
                    "price": price,
                    "volume": float(last.get("volume") or 1.0),
                    "bid": float(last.get("bid") or 0.0),
                    "ask": float(last.get("ask") or 0.0),
                }
            )
    return out


def lake_closes(
    lake_root: Path, symbol: str, timeframe: str, start: datetime, end: datetime
) -> pd.DataFrame:
    """Bars of the lake indexed by close time (epoch seconds): ``close`` and ``spread``."""
    from feature_repo.pipeline.lake import read_bars

    b = read_bars(lake_root, symbol, timeframe, start, end)
    idx = (b["close_time"].astype("int64") // 1_000_000_000).to_numpy()
    return pd.DataFrame(
        {"close": b["close"].to_numpy(float), "spread": b["spread"].to_numpy(float)}, index=idx
    )


def live_pnl(
    rows: list[dict[str, Any]],
    bars: dict[str, pd.DataFrame],
    manifest: dict[str, Any],
    *,
    points: dict[str, float | None] | None = None,
) -> pd.DataFrame:
    """Per-(symbol, bar) live P&L in the backtest's unit (see the module docstring).

    ``rows``: journal decision rows of one model, oldest first; ``bars``: symbol → lake bars
    indexed by close time (:func:`lake_closes`). Columns: ``symbol``, ``bar_close``,
    ``position``, ``turnover``, ``gross``, ``cost``, ``net``, ``cost_source``."""
    from engine.mt5 import timeframe_seconds

    c = manifest.get("costs") or {}
    commission = float(c.get("commission", 0.0))
    day_frac = timeframe_seconds(str(manifest.get("timeframe", "M5"))) / 86400
    swap_long = float(c.get("swap_long_per_day", 0.0)) * day_frac
    swap_short = float(c.get("swap_short_per_day", 0.0)) * day_frac
    out: list[dict[str, Any]] = []
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_symbol.setdefault(str(r["symbol"]), []).append(r)
    for symbol, rs in by_symbol.items():
        b = bars.get(symbol)
        if b is None or b.empty:
            continue
        times = b.index.to_numpy()
        closes = b["close"].to_numpy(float)
        point = (points or {}).get(symbol)
        prev = 0
        for r in sorted(rs, key=lambda r: int(r["bar_close"])):
            t = int(r["bar_close"])
            pos = (
                _sign(r.get("target_lots"))
                if r["verdict"] in ("sent", "hold", "abstain")  # abstain: flat, on purpose
                else prev
            )
            turnover = abs(pos - prev)
            i = int(np.searchsorted(times, t))
            if i >= len(times) - 1 or times[i] != t:
                prev = pos  # the bar (or the next one) is not in the lake: not realised yet
                continue
            close_t, close_n = closes[i], closes[i + 1]
            gross = pos * float(np.log(close_n / close_t))
            per_unit, source = 0.0, "none"
            if turnover:
                fills = _fills(r)
                side = 1 if pos > prev else -1
                if fills:
                    vol = sum(f["volume"] for f in fills)
                    per_unit = (
                        sum(
                            f["volume"]
                            * side
                            * float(
                                np.log(
                                    f["price"]
                                    / (
                                        (f["bid"] + f["ask"]) / 2
                                        if f["bid"] > 0 and f["ask"] > 0
                                        else close_t
                                    )
                                )
                            )
                            for f in fills
                        )
                        / vol
                    )
                    source = "fills"
                elif point:
                    per_unit = float(b["spread"].to_numpy(float)[i]) * point / close_t / 2
                    source = "lake_spread"
                else:
                    source = "missing"
            cost = turnover * (per_unit + commission / 2)
            swap = swap_long if pos > 0 else (swap_short if pos < 0 else 0.0)
            out.append(
                {
                    "symbol": symbol,
                    "bar_close": t,
                    "position": pos,
                    "turnover": turnover,
                    "gross": gross,
                    "cost": cost,
                    "net": gross - cost + swap,
                    "cost_source": source,
                }
            )
            prev = pos
    cols = ["symbol", "bar_close", "position", "turnover", "gross", "cost", "net", "cost_source"]
    return pd.DataFrame(out, columns=cols)


def champion_rows(rows: list[dict[str, Any]], version: str | None) -> list[dict[str, Any]]:
    """The rows of the champion's deployment: from its first decision on, its own rows and the
    rows refused before a model answered (``model_version`` empty)."""
    if version is None:
        return rows
    first = next((i for i, r in enumerate(rows) if str(r.get("model_version")) == version), None)
    if first is None:
        return []
    return [r for r in rows[first:] if r.get("model_version") in (None, "", version)]


# --- statistics ---------------------------------------------------------------------------


def mean_interval(
    expected: dict[str, Any], n: int, ci: float, seed: int = 11
) -> tuple[float, float, str]:
    """``ci`` interval of the mean of ``n`` bars under the backtest; (low, high, method)."""
    sample = np.asarray(expected.get("bars") or [], dtype=float)
    m = len(sample)
    a = (1 - ci) / 2
    if m >= 30:
        block = max(2, min(round(np.sqrt(m)), m))
        n_boot = 4000
        rng = np.random.default_rng(seed)
        n_blocks = int(np.ceil(n / block))
        starts = rng.integers(0, m - block + 1, size=(n_boot, n_blocks))
        idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(n_boot, -1)[:, :n]
        means = sample[idx].mean(axis=1)
        lo, hi = np.quantile(means, [a, 1 - a])
        return float(lo), float(hi), "block_bootstrap"
    from scipy import stats

    z = float(stats.norm.ppf(1 - a))
    half = z * float(expected["per_bar_std"]) / np.sqrt(n)
    mu = float(expected["per_bar_mean"])
    return mu - half, mu + half, "normal"


def cusum_down(x: np.ndarray, mean: float, std: float, k: float, h: float) -> dict[str, Any]:
    """One-sided CUSUM for a downward mean shift of ``x`` from ``mean`` (in units of ``std``)."""
    z = (np.asarray(x, dtype=float) - mean) / (std if std > 0 else 1.0)
    s, peak, alarm = 0.0, 0.0, None
    for i, zi in enumerate(z):
        s = max(0.0, s - zi - k)
        peak = max(peak, s)
        if alarm is None and s > h:
            alarm = i
    return {"statistic": s, "max": peak, "alarm_at": alarm, "k": k, "h": h}


def judge(
    live: pd.Series, expected: dict[str, Any], cfg: ModelMonitorSettings
) -> tuple[str, str, dict[str, float], dict[str, Any]]:
    """(status, detail, metrics, evidence) of the live per-bar series against ``expected``."""
    x = live.to_numpy(dtype=float)
    n = len(x)
    lo, hi, method = mean_interval(expected, n, cfg.perf_ci)
    mu, sd = float(expected["per_bar_mean"]), float(expected["per_bar_std"])
    cs = cusum_down(x, mu, sd, cfg.cusum_k, cfg.cusum_h)
    live_mean = float(x.mean())
    metrics = {
        "live_bars": float(n),
        "live_mean_pnl": live_mean,
        "live_net_pnl": float(x.sum()),
        "expected_mean_pnl": mu,
        "expected_interval_low": lo,
        "expected_interval_high": hi,
        "cusum": float(cs["statistic"]),
        "cusum_max": float(cs["max"]),
    }
    evidence: dict[str, Any] = {
        "unit": UNIT,
        "interval_method": method,
        "ci": cfg.perf_ci,
        "cusum": cs,
        "window": [str(live.index.min()), str(live.index.max())],
        "expected_n_bars": expected.get("n_bars"),
    }
    text = f"live mean {live_mean:+.3g}/bar over {n} bars vs backtest {mu:+.3g} ({cfg.perf_ci:.0%} interval {lo:+.3g}..{hi:+.3g})"
    problems = []
    if live_mean < lo:
        problems.append("below the backtest interval")
    if cs["alarm_at"] is not None:
        problems.append(
            f"CUSUM alarm at bar {cs['alarm_at']} (max {cs['max']:.1f} > h {cfg.cusum_h:g})"
        )
    if problems:
        evidence["code"] = BREACH_CODE
        return "breach", f"{text}: " + "; ".join(problems), metrics, evidence
    if live_mean > hi:
        return (
            "warn",
            f"{text}: above the backtest interval (check costs and sizing)",
            metrics,
            evidence,
        )
    return "ok", f"{text}: inside", metrics, evidence


def live_vs_expected(
    *,
    journal_target: Path | str,
    scope: str,
    manifest: dict[str, Any],
    lake_root: Path,
    settings: ModelMonitorSettings | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> list[CheckResult]:
    """The check (see the module docstring): one row for the champion in ``manifest``.

    ``journal_target``: the engine journal (SQLite path or ``postgresql://`` URL); ``scope``
    its rows' scope (``<login>:<magic>:<mode>``); ``version``: the champion's model version
    (default ``manifest["model_version"]``, which a pulled bundle carries)."""
    from engine.journal import JournalUnavailable, open_journal

    cfg = settings or ModelMonitorSettings()
    at = now or datetime.now(UTC)
    version = version or (str(manifest["model_version"]) if manifest.get("model_version") else None)
    subject = f"{manifest.get('model_name', 'model')}@v{version or '?'}"

    def result(status: str, detail: str, **kw: Any) -> list[CheckResult]:
        return [CheckResult(CHECK, subject, status, detail, at, **kw)]  # type: ignore[arg-type]

    expected = manifest.get("expected_pnl")
    if not isinstance(expected, dict):
        return result("skipped", "the bundle has no expected_pnl (trained before it was recorded)")
    if expected.get("unit") != UNIT:
        return result("skipped", f"expected_pnl unit {expected.get('unit')!r} is not {UNIT!r}")
    target = str(journal_target)
    if not target.startswith(("postgresql://", "postgres://")) and not Path(target).exists():
        return result("skipped", f"no engine journal at {target}")
    n_symbols = max(len(manifest.get("symbols") or []), 1)
    try:
        j = open_journal(target, scope, durable=False)
        try:
            rows = j.rows(limit=(cfg.perf_window_bars + 1) * n_symbols * 2)
        finally:
            j.close()
    except JournalUnavailable as exc:
        return result("skipped", f"journal not readable: {exc}")
    rows = champion_rows(rows, version)
    if not rows:
        return result("skipped", f"no journal rows of {subject} in scope {scope!r}")
    from engine.mt5 import timeframe_seconds
    from feature_repo.pipeline.lake import symbol_point

    tf = str(manifest.get("timeframe", "M5"))
    step = timeframe_seconds(tf)
    t0 = datetime.fromtimestamp(min(int(r["bar_close"]) for r in rows) - 2 * step, UTC)
    t1 = datetime.fromtimestamp(max(int(r["bar_close"]) for r in rows), UTC) + timedelta(days=1)
    symbols = sorted({str(r["symbol"]) for r in rows})
    bars = {s: lake_closes(lake_root, s, tf, t0, t1) for s in symbols}
    frame = live_pnl(rows, bars, manifest, points={s: symbol_point(lake_root, s) for s in symbols})
    series = frame.groupby("bar_close", sort=True)["net"].mean().tail(cfg.perf_window_bars)
    series.index = pd.to_datetime(series.index, unit="s", utc=True)
    if len(series) < cfg.perf_min_bars:
        return result(
            "skipped",
            f"{len(series)} realised live bars < {cfg.perf_min_bars} needed (TX_MONITOR_PERF_MIN_BARS)",
            metrics={"live_bars": float(len(series))},
        )
    status, detail, metrics, evidence = judge(series, expected, cfg)
    evidence["cost_sources"] = frame["cost_source"].value_counts().to_dict()
    evidence["scope"] = scope
    log.info("%s %s: %s", CHECK, subject, detail)
    return result(status, detail, metrics=metrics, evidence=evidence)


def resolve_scope(target: str, cfg: ModelMonitorSettings, engine: Any) -> str | None:
    """The engine's journal scope: ``TX_MONITOR_JOURNAL_SCOPE``, else from the MT5 login, the
    magic and the mode, else the one scope in the journal with that magic and mode."""
    from engine.journal import journal_scope, open_journal

    if cfg.journal_scope:
        return cfg.journal_scope
    if engine.mt5_login:
        return journal_scope(int(engine.mt5_login), int(engine.magic), str(engine.mode))
    j = open_journal(target, "", durable=False)
    try:
        found = [s for s in j.scopes() if s.endswith(f":{int(engine.magic)}:{engine.mode}")]
    finally:
        j.close()
    return found[0] if len(found) == 1 else None


def check(ctx: Any) -> list[CheckResult]:
    """``live_vs_expected`` for the monitoring runner: the champion bundle of the run, the
    engine journal of ``EngineSettings`` (``TX_JOURNAL_URL`` / ``TX_JOURNAL_PATH``), the lake
    of the platform."""
    import json

    from engine.config import EngineSettings

    cfg = ModelMonitorSettings()
    at = ctx.now
    name = ctx.settings.model_name
    bundle = ctx.bundle()
    if bundle is None:
        return [CheckResult(CHECK, name, "skipped", "no champion bundle in the registry", at)]
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    engine = EngineSettings(TX_HOME=ctx.settings.home)  # type: ignore[call-arg]
    target = engine.journal_target
    if not target.startswith(("postgresql://", "postgres://")) and not Path(target).exists():
        return [
            CheckResult(
                CHECK,
                f"{name}@v{manifest.get('model_version')}",
                "skipped",
                f"no engine journal at {target}",
                at,
            )
        ]
    scope = resolve_scope(target, cfg, engine)
    if scope is None:
        return [
            CheckResult(
                CHECK,
                f"{name}@v{manifest.get('model_version')}",
                "skipped",
                f"cannot tell the engine's journal scope (magic {engine.magic}, mode {engine.mode}): set TX_MONITOR_JOURNAL_SCOPE",
                at,
            )
        ]
    return live_vs_expected(
        journal_target=target,
        scope=scope,
        manifest=manifest,
        lake_root=ctx.settings.lake_dir,
        settings=cfg,
        now=at,
    )
