"""The real-export report's learned slippage: the fills a file's model learns from come only
from the file's training window (a poisoned test window changes nothing, a poisoned training
bar does), and the rendered report shows the learned-slippage rows, the grid rows, the
calibration table and the intervals. Synthetic exports in ``tmp_path``: no real data needed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.unit

NAME = "EURUSD_H1__synthetic.csv"
START = datetime(2024, 1, 1, tzinfo=UTC)
TEST_START = datetime(2024, 3, 1, tzinfo=UTC)
END = datetime(2024, 4, 1, tzinfo=UTC)


def _bars(seed: int = 5) -> pd.DataFrame:
    """Hourly EURUSD bars on weekdays, a random walk with a spread that varies by bar."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(START, END, freq="h", inclusive="left")
    t = t[t.weekday < 5]
    close = 1.08 * np.exp(np.cumsum(rng.normal(0, 0.0015, len(t))))
    op = np.concatenate([[1.08], close[:-1]])
    return pd.DataFrame(
        {
            "time": t.strftime("%Y-%m-%d %H:%M:%S"),
            "open": op.round(5),
            "high": (np.maximum(op, close) + 0.0003).round(5),
            "low": (np.minimum(op, close) - 0.0003).round(5),
            "close": close.round(5),
            "tick_volume": rng.integers(100, 1000, len(t)),
            "spread": rng.integers(5, 40, len(t)),
            "real_volume": 0,
        }
    )


def _write(folder: Path, df: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / NAME, index=False)
    return folder


def _learn(raw: Path, home: Path) -> tuple[Any, dict[str, Any], pd.DataFrame]:
    from training.real_exports import Prepared, learned_slippage
    from training.slippage import fills_frame, read_fills

    s = PlatformSettings(home=home)
    p = Prepared(s, "EURUSD", "H1", START, TEST_START, END, 0, 0, 0, 0, False)
    spec = {"slippage_fills": 500, "slippage_seed": 0}
    model, summary = learned_slippage({"file": NAME, "broker_tz": "fixed:+0"}, raw, p, spec)
    return model, summary, fills_frame(read_fills(home / "slippage_fills.sqlite"))


def _probe(model: Any) -> np.ndarray:
    """Predictions on a fixed grid of states (mean and the three quantiles)."""
    from training.slippage import design

    rng = np.random.default_rng(1)
    n = 200
    df = pd.DataFrame(
        {
            "spread_points": rng.uniform(0, 60, n),
            "volatility_points": rng.uniform(0, 200, n),
            "volume": rng.choice([0.1, 1.0, 5.0], n),
            "side": rng.choice(["buy", "sell"], n),
            "hour_utc": rng.integers(0, 24, n),
            "venue": "sim:50000001",
            "symbol": "EURUSD",
        }
    )
    pred = model.predict(design(df, model.features))
    return np.column_stack([pred["mean"], pred["q"]])


def test_learned_slippage_when_test_window_is_poisoned_then_fills_and_model_are_unchanged(
    tmp_path: Path,
) -> None:
    bars = _bars()
    is_test = pd.to_datetime(bars["time"], utc=True) >= pd.Timestamp(TEST_START)
    poisoned = bars.copy()
    poisoned.loc[is_test, "spread"] = 5000  # a test window no sane model could ignore
    poisoned.loc[is_test, "close"] = (poisoned.loc[is_test, "close"] * 1.3).round(5)
    clean_model, clean_sum, clean_fills = _learn(_write(tmp_path / "clean", bars), tmp_path / "h1")
    pois_model, pois_sum, pois_fills = _learn(
        _write(tmp_path / "poisoned", poisoned), tmp_path / "h2"
    )

    # every fill is on a training-window bar, and the spreads seen are the training window's
    assert clean_sum["last_fill_utc"] <= TEST_START.timestamp()
    assert clean_sum["window_utc"] == [int(START.timestamp()), int(TEST_START.timestamp())]
    assert clean_fills["spread_points"].max() < 40 and pois_fills["spread_points"].max() < 40
    assert len(clean_fills) > 400
    cols = ["filled_at", "side", "volume", "spread_points", "volatility_points", "slippage_points"]
    pd.testing.assert_frame_equal(clean_fills[cols], pois_fills[cols])
    np.testing.assert_array_equal(_probe(clean_model), _probe(pois_model))
    assert clean_sum["evaluation"] == pois_sum["evaluation"]

    # control: poisoning training-window spreads does change the fills and the model
    train_poisoned = bars.copy()
    train_poisoned.loc[~is_test, "spread"] = train_poisoned.loc[~is_test, "spread"] * 10
    tp_model, _, tp_fills = _learn(
        _write(tmp_path / "train_poisoned", train_poisoned), tmp_path / "h3"
    )
    assert tp_fills["spread_points"].max() >= 50
    assert not np.array_equal(_probe(clean_model), _probe(tp_model))


def test_render_when_learned_slippage_and_grid_then_rows_tables_and_intervals(
    tmp_path: Path,
) -> None:
    from training.backtest import Costs, EstimatorSlippage, SpreadVolSlippage, backtest, baselines
    from training.real_exports import BASELINES, LEARNED, LEARNED_SLIP, FileResult, render

    bars = _bars()
    raw = _write(tmp_path / "raw", bars)
    model, summary, _ = _learn(raw, tmp_path / "h")
    close = bars["close"].to_numpy(float)
    ds = pd.DataFrame(
        {
            "symbol": "EURUSD",
            "event_timestamp": pd.to_datetime(bars["time"], utc=True)[:-1],
            "ret_next": np.diff(np.log(close)),
            "spread_ret": bars["spread"].to_numpy(float)[:-1] * 1e-5 / close[:-1],
            "spread_points": bars["spread"].to_numpy(float)[:-1],
        }
    )
    fixed = Costs(slippage=SpreadVolSlippage())
    learned = Costs(slippage=EstimatorSlippage(model, venue=summary["venue"]))
    pos = np.sign(np.sin(np.arange(len(ds)) / 7)).astype(int)
    m = {**backtest(ds, pos, "H1", fixed), "accuracy": 0.5}
    ml = {**backtest(ds, pos, "H1", learned), "accuracy": 0.5}
    assert ml["net_return"] != m["net_return"]  # the learned costs are charged
    grid_m = backtest(ds, pos / 2, "H1", fixed)
    r = FileResult(
        file=NAME,
        symbol="EURUSD",
        timeframe="H1",
        broker_tz="fixed:+0",
        train_rows={"trend_v1": 900},
        test_rows=len(ds),
        test_range=("2024-03-01", "2024-03-29"),
        models={
            "trend_v1": m,
            f"trend_v1{LEARNED}": m,
            f"trend_v1{LEARNED_SLIP}": ml,
            f"trend_v1{LEARNED}{LEARNED_SLIP}": ml,
        },
        baselines=baselines(ds, "H1", fixed),
        baselines_learned=baselines(ds, "H1", learned),
        lake={"bars": len(bars), "quarantined_days": 0, "quarantined_rows": 0, "flagged_rows": 0},
        slippage={
            **summary,
            "per_trade": {"model": "trend_v1", "trades": 10.0, "fixed_bp": 1.0, "learned_bp": 2.0}
            | {"fixed_points": 10.0, "learned_points": 20.0, "half_spread_bp": 1.0}
            | {"spread_points_median": 20.0},
        },
        grid={
            "range": ("2024-03-01", "2024-03-29"),
            "test_bars": len(ds),
            "grids": {
                "flatten": {"metrics": grid_m, "orders": 4, "usd": 1.0, "actions": {"add:x": 4}}
            },
            "baselines": {"buy_and_hold": baselines(ds, "H1", fixed)["buy_and_hold"]},
        },
    )
    text = render(
        [r],
        {"horizon_bars": 6, "min_confidence": 0.5, "commission": 0.0}
        | {"slippage_spread_k": 0.25, "slippage_vol_k": 0.05, "experiments": ["trend_v1"]},
        raw,
    )
    rows = [ln for ln in text.splitlines() if ln.startswith("| EURUSD | H1 | 2024-03-01")]
    strategy = [ln.split("|")[5].strip() for ln in rows]
    assert strategy == [
        "trend_v1: XGBoost, old rule (top ≥ min_conf)",
        "trend_v1+policy: XGBoost, **learned policy**",
        "trend_v1: XGBoost, old rule (top ≥ min_conf) (learned slippage)",
        "trend_v1+policy: XGBoost, **learned policy** (learned slippage)",
        "grid, reverse_mode=flatten",
        *(f"{lbl}" for lbl in ("always flat", "buy & hold", "momentum (24 bars)")),
        *(
            f"{lbl} (learned slippage)"
            for lbl in ("always flat", "buy & hold", "momentum (24 bars)")
        ),
    ], strategy
    assert len(BASELINES) == 3
    assert all(ln.count("[") == 2 for ln in rows)  # net and Sharpe, each with its interval
    assert [ln.split("|")[6].strip() for ln in rows] == ["fixed"] * 2 + ["learned"] * 2 + [
        "fixed"
    ] * 4 + ["learned"] * 3
    assert "simulated from the file's own bars" in text and "training window" in text
    calib = [
        ln
        for ln in text.splitlines()
        if ln.startswith("| EURUSD | H1 |") and ("| passes:" in ln or "| fails:" in ln)
    ]
    assert len(calib) == 1, calib
    ev = summary["evaluation"]
    assert f"{ev['quantiles'][1]['coverage']:.3f}" in calib[0]
    assert "1.00 bp (10.0 pts) → 2.00 bp (20.0 pts)" in calib[0]
    lo, med, hi = summary["fill_spread_points"]
    assert 5 <= lo <= med <= hi < 40 and f"| {lo:g}–{hi:g} (median {med:g}) / 20 |" in calib[0]
    assert "| EURUSD | H1 | flatten | — / 4 | — / +1.00 | add:x 4 |" in text
