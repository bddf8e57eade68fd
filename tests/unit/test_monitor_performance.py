"""Live versus expected on a real engine journal (rows written through the Journal API) and a
real bar lake: live P&L is in the backtest's unit, a strategy that keeps its edge is inside the
backtest interval, one that lost it is a ``performance_breach``, too few bars is skipped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.journal import DecisionRecord, open_journal
from feature_repo.pipeline import lake
from training.backtest import Costs, pnl_frame, portfolio_pnl
from training.labels import make_labels
from training.monitor.performance import (
    BREACH_CODE,
    UNIT,
    cusum_down,
    expected_pnl_from_frame,
    live_vs_expected,
)
from training.monitor.settings import ModelMonitorSettings

pytestmark = pytest.mark.unit

SYM, TF, POINT, SPREAD = "EURUSD", "M5", 1e-5, 10
N_BARS = 576 * 2  # four days of M5 bars
SPLIT = 600  # bars before: the "test window" of training; after: live
SCOPE = "5001:77:paper"
COSTS = {"commission": 0.0, "slippage_spread_k": 0.0, "slippage_vol_k": 0.0}


def write_lake(root: Path, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-02-02", periods=N_BARS, freq="5min", tz="UTC")
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 6e-4, N_BARS)))
    bars = pd.DataFrame(
        {
            "time": t,
            "close_time": t + pd.Timedelta(minutes=5),
            "symbol": SYM,
            "timeframe": TF,
            "open": close,
            "high": close * 1.0005,
            "low": close * 0.9995,
            "close": close,
            "tick_volume": 100,
            "spread": SPREAD,
            "real_volume": 0,
            "server_time": (t.astype("int64") // 10**9 + 7200).astype("int64"),
        }
    )
    for day, part in bars.groupby(bars["time"].dt.date):
        lake.write_partition(root, part.reset_index(drop=True), SYM, TF, day)
    lake.write_symbol_meta(root, SYM, {"point": POINT, "digits": 5})
    return bars


def edge_positions(ret_next: np.ndarray, hit: float, seed: int) -> np.ndarray:
    """Long/short with the sign of the next move ``hit`` of the time, the wrong way otherwise."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(ret_next)) < hit
    return np.where(right, 1, -1) * np.sign(ret_next).astype(int)


def journal_live(
    path: Path | str, labelled: pd.DataFrame, pos: np.ndarray, version: str = "4"
) -> None:
    """One decision row per bar, as the engine writes it: ``sent`` with the fill when the
    position changes (buys at the ask, sells at the bid, the result carrying both), else
    ``hold`` with the lots held."""
    j = open_journal(path, SCOPE)
    prev = 0
    for (_, r), p in zip(labelled.iterrows(), pos, strict=True):
        bar_close = int(r["event_timestamp"].timestamp())
        close = float(r["close"])
        bid, ask = close, close + SPREAD * POINT
        if p != prev:
            side = "buy" if p > prev else "sell"
            price = ask if side == "buy" else bid
            result = {
                "results": [
                    {
                        "client_id": f"tx-{bar_close}-{k}",
                        "intent": f"open:{side}" if k == 0 else f"close:{k}",
                        "status": "done",
                        "attempts": [
                            {
                                "retcode": 10009,
                                "price": price,
                                "volume": 0.1,
                                "bid": bid,
                                "ask": ask,
                            }
                        ],
                    }
                    for k in range(abs(p - prev))
                ]
            }
            verdict, req = "sent", {"orders": [{"symbol": SYM}]}
        else:
            verdict, req, result = "hold", None, None
        j.record(
            DecisionRecord(
                SYM, bar_close, bar_close + 1.0, float(bar_close), version,
                {1: "long", -1: "short", 0: "flat"}[int(p)], 0.1 * p, verdict, None, req,
                result, 10009 if result else None, {"total_ms": 1.0},
            )
        )  # fmt: skip
        prev = int(p)
    j.close()


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, object]:
    bars = write_lake(tmp_path / "lake")
    lab = make_labels(bars, horizon=1, point=POINT)
    lab = lab.merge(bars[["close_time", "close"]], left_on="event_timestamp", right_on="close_time")
    test, live = lab.iloc[:SPLIT].reset_index(drop=True), lab.iloc[SPLIT:].reset_index(drop=True)
    test_pos = edge_positions(test["ret_next"].to_numpy(), 0.65, seed=1)
    frame = pnl_frame(test, test_pos, TF, Costs())
    manifest = {
        "model_name": "tx_trend",
        "model_version": "4",
        "timeframe": TF,
        "symbols": [SYM],
        "costs": COSTS,
        "expected_pnl": expected_pnl_from_frame(frame),
    }
    return {"lake": tmp_path / "lake", "live": live, "manifest": manifest, "tmp": tmp_path}


def run(world: dict[str, object], journal: Path, **kw: object) -> object:
    return live_vs_expected(
        journal_target=journal,
        scope=SCOPE,
        manifest=world["manifest"],  # type: ignore[arg-type]
        lake_root=world["lake"],  # type: ignore[arg-type]
        settings=ModelMonitorSettings(),
        now=datetime(2026, 2, 6, tzinfo=UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_expected_pnl_when_written_then_its_mean_times_bars_is_the_backtest_net_return() -> None:
    rng = np.random.default_rng(0)
    t = pd.date_range("2026-02-02 00:05", periods=300, freq="5min", tz="UTC")
    ds = pd.DataFrame(
        {
            "symbol": SYM,
            "event_timestamp": t,
            "ret_next": rng.normal(0, 5e-4, 300),
            "spread_ret": 1e-4,
        }
    )
    frame = pnl_frame(ds, edge_positions(ds["ret_next"].to_numpy(), 0.6, 2), TF, Costs())
    ex = expected_pnl_from_frame(frame)
    assert ex["unit"] == UNIT and ex["n_bars"] == 300 and len(ex["bars"]) == 300
    assert ex["per_bar_mean"] * 300 == pytest.approx(portfolio_pnl(frame).sum(), rel=1e-12)
    assert ex["q05"] < ex["per_bar_mean"] < ex["q95"]


def test_live_pnl_from_the_journal_equals_the_backtest_pnl_of_the_same_positions(
    world: dict[str, object],
) -> None:
    from training.monitor.performance import lake_closes, live_pnl

    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    pos = edge_positions(live["ret_next"].to_numpy(), 0.65, seed=2)
    path = Path(world["tmp"]) / "journal.db"  # type: ignore[arg-type]
    journal_live(path, live, pos)
    j = open_journal(path, SCOPE)
    rows = j.rows()
    j.close()
    bars = {
        SYM: lake_closes(
            world["lake"],
            SYM,
            TF,
            datetime(2026, 2, 1, tzinfo=UTC),
            datetime(2026, 2, 7, tzinfo=UTC),
        )
    }  # type: ignore[arg-type]
    got = live_pnl(rows, bars, world["manifest"])  # type: ignore[arg-type]
    want = pnl_frame(live, pos, TF, Costs())
    assert len(got) == len(live)  # labelled bars: each has its next bar in the lake
    # fills at the ask/bid around the mid pay half the spread per unit: the backtest's cost
    np.testing.assert_allclose(got["net"], want["net"], atol=1e-8)
    assert set(got["cost_source"]) <= {"fills", "none"}


def test_live_vs_expected_when_the_strategy_keeps_its_edge_then_ok(
    world: dict[str, object],
) -> None:
    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    path = Path(world["tmp"]) / "journal.db"  # type: ignore[arg-type]
    journal_live(path, live, edge_positions(live["ret_next"].to_numpy(), 0.65, seed=2))
    [r] = run(world, path)  # type: ignore[misc]
    assert r.status == "ok", r.detail
    assert (
        r.metrics["expected_interval_low"]
        <= r.metrics["live_mean_pnl"]
        <= r.metrics["expected_interval_high"]
    )
    assert (
        r.metrics["live_bars"] == len(live) and r.evidence["interval_method"] == "block_bootstrap"
    )


def test_live_vs_expected_when_the_edge_is_gone_then_performance_breach(
    world: dict[str, object],
) -> None:
    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    path = Path(world["tmp"]) / "journal.db"  # type: ignore[arg-type]
    # the market turned: the model is now right only 40 % of the time
    journal_live(path, live, edge_positions(live["ret_next"].to_numpy(), 0.40, seed=2))
    [r] = run(world, path)  # type: ignore[misc]
    assert r.status == "breach" and r.evidence["code"] == BREACH_CODE, r.detail
    assert r.metrics["live_mean_pnl"] < r.metrics["expected_interval_low"]
    assert r.evidence["cusum"]["alarm_at"] is not None


def test_live_vs_expected_when_another_scope_or_model_then_its_rows_are_not_read(
    world: dict[str, object],
) -> None:
    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    path = Path(world["tmp"]) / "journal.db"  # type: ignore[arg-type]
    journal_live(path, live, edge_positions(live["ret_next"].to_numpy(), 0.40, seed=2))
    [other_scope] = live_vs_expected(
        journal_target=path,
        scope="5001:78:paper",
        manifest=world["manifest"],
        lake_root=world["lake"],  # type: ignore[arg-type]
    )
    [other_model] = run(world, path, version="5")  # type: ignore[misc]
    assert other_scope.status == "skipped" and other_model.status == "skipped"


def test_live_vs_expected_when_too_few_bars_then_skipped(world: dict[str, object]) -> None:
    live: pd.DataFrame = world["live"].iloc[:20]  # type: ignore[attr-defined]
    path = Path(world["tmp"]) / "journal.db"  # type: ignore[arg-type]
    journal_live(path, live, edge_positions(live["ret_next"].to_numpy(), 0.40, seed=2))
    [r] = run(world, path)  # type: ignore[misc]
    assert r.status == "skipped" and "< 48 needed" in r.detail


def test_live_vs_expected_when_the_bundle_predates_expected_pnl_then_skipped(
    world: dict[str, object],
) -> None:
    manifest = dict(world["manifest"])  # type: ignore[call-overload]
    manifest.pop("expected_pnl")
    [r] = live_vs_expected(
        journal_target=Path(world["tmp"]) / "none.db",
        scope=SCOPE,
        manifest=manifest,
        lake_root=world["lake"],  # type: ignore[arg-type]
    )
    assert r.status == "skipped" and "no expected_pnl" in r.detail


def test_cusum_when_the_mean_drops_by_half_a_sigma_then_it_alarms_and_not_before() -> None:
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 1, 500), rng.normal(-0.5, 1, 300)])
    cs = cusum_down(x, 0.0, 1.0, k=0.25, h=12.0)
    assert cs["alarm_at"] is not None and 500 <= cs["alarm_at"] < 700
    assert cusum_down(x[:500], 0.0, 1.0, k=0.25, h=12.0)["alarm_at"] is None


def test_resolve_scope_when_one_engine_with_that_magic_and_mode_then_found_else_none(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from training.monitor.performance import resolve_scope

    path = tmp_path / "journal.db"
    for scope in ("5001:77:paper", "5001:77:backtest", "5001:78:paper"):
        j = open_journal(path, scope)
        j.record(
            DecisionRecord(SYM, 1, 1.0, 1.0, "1", "flat", 0.0, "hold", None, None, None, None, {})
        )
        j.close()
    cfg = ModelMonitorSettings()
    eng = SimpleNamespace(mt5_login=None, magic=77, mode="paper")
    assert resolve_scope(str(path), cfg, eng) == "5001:77:paper"
    assert (
        resolve_scope(str(path), cfg, SimpleNamespace(mt5_login=9, magic=77, mode="paper"))
        == "9:77:paper"
    )
    assert (
        resolve_scope(str(path), cfg, SimpleNamespace(mt5_login=None, magic=79, mode="paper"))
        is None
    )
    explicit = ModelMonitorSettings(journal_scope="5001:78:paper")
    assert resolve_scope(str(path), explicit, eng) == "5001:78:paper"


def test_monitor_run_when_live_vs_expected_is_registered_then_the_breach_is_stored(
    world: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from titanovax.monitor import CHECKS, MonitorContext, query_results, run
    from titanovax.settings import PlatformSettings

    tmp = Path(world["tmp"])  # type: ignore[arg-type]
    live: pd.DataFrame = world["live"]  # type: ignore[assignment]
    (tmp / "engine").mkdir()
    journal_live(
        tmp / "engine" / "journal.sqlite",
        live,
        edge_positions(live["ret_next"].to_numpy(), 0.40, seed=2),
    )
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(world["manifest"]))
    monkeypatch.setenv("TX_MONITOR_JOURNAL_SCOPE", SCOPE)
    settings = PlatformSettings(home=tmp, model_name="tx_trend")
    assert {"live_vs_expected", "shadow_ab"} <= set(CHECKS)

    mr = run(
        MonitorContext(settings, now=datetime(2026, 2, 6, tzinfo=UTC), bundle_dir=bundle),
        only=["live_vs_expected"],
        actions=lambda ctx, rows: [],
        log_mlflow=False,
    )

    assert mr.worst == "breach"
    [row] = query_results(settings.monitor_db, check="live_vs_expected")
    assert row["status"] == "breach" and row["subject"] == "tx_trend@v4"


def test_monitor_run_when_nothing_is_deployed_then_both_model_checks_are_skipped(
    tmp_path: Path,
) -> None:
    from titanovax.monitor import MonitorContext, run
    from titanovax.settings import PlatformSettings

    settings = PlatformSettings(home=tmp_path, model_name="tx_none")
    bundle = tmp_path / "bundle"  # an old bundle: no expected_pnl
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"model_name": "tx_none", "model_version": "1"}')
    mr = run(
        MonitorContext(settings, bundle_dir=bundle),
        only=["live_vs_expected", "shadow_ab"],
        actions=lambda ctx, rows: [],
        log_mlflow=False,
    )
    assert [(r.check, r.status) for r in mr.results] == [
        ("live_vs_expected", "skipped"),
        ("shadow_ab", "skipped"),
    ]
