"""The real-export report on one real file (USDJPY H1, a year): the file goes through ingest,
validation and the offline store, the datasets come from Feast ``get_historical_features`` on
each experiment's feature service, and the table has every model and baseline with CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from titanovax.settings import PlatformSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_real_export_report_when_run_on_usdjpy_then_datasets_come_from_feast_and_rows_have_cis_and_baselines(
    raw_dir: Path, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureStore

    from training.config import CONFIG_DIR
    from training.real_exports import prepare, render, run_report

    if not (raw_dir / "USDJPY_H1__Chikwui_Trading-bott.csv").exists():
        pytest.skip(f"USDJPY_H1__Chikwui_Trading-bott.csv not in {raw_dir}")
    calls: list[tuple[str, int]] = []
    original = FeatureStore.get_historical_features

    def spy(self: FeatureStore, entity_df: Any, features: Any, **kw: Any) -> Any:
        calls.append((features.name, len(entity_df)))
        return original(self, entity_df=entity_df, features=features, **kw)

    monkeypatch.setattr(FeatureStore, "get_historical_features", spy)
    s = PlatformSettings(home=tmp_path, redis_url=redis_url.rsplit("/", 1)[0] + "/12")
    results, spec = run_report(raw_dir, only=["USDJPY_H1"], settings=s)

    (r,) = results
    assert spec["experiments"] == ["trend_v1", "trend_v2"]
    # one point-in-time join per experiment, on its feature service, an entity row per bar close
    assert [c[0] for c in calls] == ["trend_v1", "trend_v2"] and all(n > 6000 for _, n in calls)
    home = tmp_path / "real_exports" / "USDJPY_H1__Chikwui_Trading-bott"
    assert list((home / "lake" / "symbol=USDJPY" / "timeframe=H1").glob("date=*/bars.parquet"))
    assert r.lake["bars"] == 6229 and r.lake["quarantined_days"] == 0 and not r.lake["reused"]

    assert r.test_range[0] >= "2025-03-26" and r.test_rows > 1500
    assert r.train_rows["trend_v1"] > 4000 and r.train_rows["trend_v2"] > 3800
    # each model under the old rule and under its learned policy (docs/execution-policy.md),
    # each of them under the fixed costs and under the file's learned slippage
    rows = {"trend_v1", "trend_v2", "trend_v1+policy", "trend_v2+policy"}
    assert set(r.models) == rows | {f"{n} (learned slippage)" for n in rows}
    assert set(r.baselines) == set(r.baselines_learned) == {"flat", "buy_and_hold", "momentum"}
    grid = [row["metrics"] for row in r.grid["grids"].values()]
    assert set(r.grid["grids"]) == {"flatten", "reverse", "stop_adding"}
    for m in (*r.models.values(), *r.baselines.values(), *r.baselines_learned.values(), *grid):
        assert m["sharpe_ci_low"] <= m["sharpe"] <= m["sharpe_ci_high"]
        assert m["net_return_ci_low"] <= m["net_return"] <= m["net_return_ci_high"]
    assert r.baselines["flat"]["net_return"] == 0.0 and r.baselines["flat"]["trades"] == 0
    # the same positions pay more or less under the learned slippage, never the same
    assert r.models["trend_v1 (learned slippage)"]["trades"] == r.models["trend_v1"]["trades"]
    assert (
        r.models["trend_v1 (learned slippage)"]["net_return"] != r.models["trend_v1"]["net_return"]
    )
    # the slippage model: fills only before test_start, held-out calibration per quantile
    sl = r.slippage
    assert sl["last_fill_utc"] <= sl["window_utc"][1] and sl["fills"] > 2000
    assert sl["window_utc"][1] <= pd.Timestamp(r.test_range[0], tz="UTC").timestamp() + 86400
    assert [q["q"] for q in sl["evaluation"]["quantiles"]] == [0.1, 0.5, 0.9]
    assert sl["per_trade"]["model"] == "trend_v1" and sl["per_trade"]["trades"] > 0

    # the second run reuses the prepared lake while file, rule, range and pipeline code are unchanged
    entry = next(
        e
        for e in yaml.safe_load((CONFIG_DIR / "real_exports_v1.yaml").read_text())["files"]
        if e["file"].startswith("USDJPY_H1")
    )
    assert prepare(entry, raw_dir, s).reused

    text = render(results, spec, raw_dir)
    rows = [ln for ln in text.splitlines() if ln.startswith("| USDJPY | H1 |")]
    scored = [ln for ln in rows if ln.count("[") == 2]
    # 2 models x (old rule, learned policy) x (fixed, learned slippage) + 3 grid modes
    # + 3 baselines x (fixed, learned slippage), each with 2 CIs
    assert len(scored) == 17, rows
    assert sum("(learned slippage) | learned |" in ln for ln in scored) == 7, scored
    assert sum("| grid, reverse_mode=" in ln for ln in scored) == 3, scored
    # the policy table: the policy each model chose, under each cost model
    policy_rows = [
        ln.split("|")[3].strip() for ln in rows if ln.count("[") == 0 and "fills" not in ln
    ]
    assert [n for n in policy_rows if n.startswith("trend")] == [
        "trend_v1",
        "trend_v1 (learned slippage)",
        "trend_v2",
        "trend_v2 (learned slippage)",
    ], rows
    # the calibration table (one row) and the grid's engine table (one row a mode)
    assert sum(("| passes:" in ln or "| fails:" in ln) for ln in rows) == 1, rows
    assert sum(ln.count("[") == 1 for ln in rows) == 3, rows
    assert "get_historical_features" in text and "`fixed:+2`" in text
    assert "simulated from the file's own bars" in text
