"""Ingest through the gateway: broker time rule applied per bar, symbol metadata stored with the
lake (feature_repo.pipeline.ingest, feature_repo.pipeline.lake)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.mt5.brokertime import NewYorkClose
from engine.mt5.gateway import open_terminal
from feature_repo.pipeline import lake, store
from feature_repo.pipeline.ingest import broker_rule, ingest
from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.unit

START = datetime(2024, 3, 4, tzinfo=UTC)  # Monday before the US DST switch (Sunday 2024-03-10)
END = datetime(2024, 3, 16, tzinfo=UTC)


def _utc_grid() -> np.ndarray:
    """H1 bar opens (UTC) of the FX week: Sunday 17:00 to Friday 17:00 New York."""
    utc = np.arange(
        int(START.timestamp()) - 86_400, int(END.timestamp()) + 7 * 86_400, 3600, dtype=np.int64
    )
    ny7 = NewYorkClose().to_server(utc)
    return utc[(ny7 // 86_400 + 3) % 7 < 5]


def _export(folder: Path) -> np.ndarray:
    """An EURUSD H1 copy_rates CSV whose times are New-York-close server time."""
    utc = _utc_grid()
    server = NewYorkClose().to_server(utc)
    n = len(server)
    close = 1.08 + 0.0001 * np.sin(np.arange(n) / 5.0)
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(server, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
            "open": close.round(5),
            "high": (close + 0.0004).round(5),
            "low": (close - 0.0004).round(5),
            "close": close.round(5),
            "tick_volume": 100,
            "spread": 12,
            "real_volume": 0,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "EURUSD_H1__unit.csv", index=False)
    return utc


def _settings(tmp_path: Path, broker_tz: str | None) -> PlatformSettings:
    return PlatformSettings(
        home=tmp_path / "tx",
        mt5_exports=tmp_path / "raw",
        symbols=["EURUSD"],
        timeframe="H1",
        broker_tz=broker_tz,
        broker_utc_offset_hours=2,
    )


def test_ingest_when_broker_follows_ny_close_then_bars_across_the_dst_switch_land_on_true_utc(
    tmp_path: Path,
) -> None:
    utc = _export(tmp_path / "raw")
    s = _settings(tmp_path, "ny-close")
    term = open_terminal("sim", sim_feed=tmp_path / "raw")
    res = ingest(s, "EURUSD", "H1", START, END, terminal=term)
    staged = lake.read_bars(s.staging_dir, "EURUSD", "H1", START, END)
    want = utc[(utc >= START.timestamp()) & (utc < END.timestamp())]
    assert res.rows == len(want) == len(staged) and res.broker_time_rule == "ny-close"
    np.testing.assert_array_equal(staged["time"].astype("int64").to_numpy() // 10**9, want)
    # the server clock jumped an hour with New York; UTC stays a clean hourly grid
    server = staged["server_time"].to_numpy()
    assert set(np.unique(server - want)) == {2 * 3600, 3 * 3600}
    assert (
        res.broker_time_ok
        and res.broker_time_check is not None
        and "agrees" in res.broker_time_check
    )


def test_ingest_when_fixed_offset_is_configured_for_a_dst_broker_then_the_check_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    utc = _export(tmp_path / "raw")
    s = _settings(tmp_path, None)  # the old setting: fixed +2
    assert broker_rule(s).spec == "fixed:+2"
    with caplog.at_level(logging.WARNING, logger="engine.mt5.brokertime"):
        res = ingest(
            s, "EURUSD", "H1", START, END, terminal=open_terminal("sim", sim_feed=tmp_path / "raw")
        )
    staged = lake.read_bars(s.staging_dir, "EURUSD", "H1", START, END)
    t = staged["time"].astype("int64").to_numpy() // 10**9
    truth = NewYorkClose().to_utc(staged["server_time"].to_numpy())
    after = truth >= int(datetime(2024, 3, 10, 7, tzinfo=UTC).timestamp())
    assert after.any() and (~after).any()
    np.testing.assert_array_equal(t[~after], truth[~after])  # before the switch +2 is right
    assert np.all(t[after] == truth[after] + 3600)  # after it every bar is stamped an hour late
    assert np.all(np.isin(truth, utc))
    assert not res.broker_time_ok and "TX_BROKER_TZ=ny-close" in (res.broker_time_check or "")
    assert any("disagrees" in r.getMessage() for r in caplog.records)


def test_ingest_when_run_then_symbol_metadata_is_stored_with_the_lake_and_read_back(
    tmp_path: Path,
) -> None:
    _export(tmp_path / "raw")
    s = _settings(tmp_path, "ny-close")
    term = open_terminal("sim", sim_feed=tmp_path / "raw")
    res = ingest(s, "EURUSD", "H1", START, END, terminal=term)
    info = term.symbol_info("EURUSD")
    assert info is not None and res.symbol_meta == str(
        s.lake_dir / "symbol=EURUSD" / "_symbol.json"
    )
    meta = lake.read_symbol_meta(s.lake_dir, "EURUSD")
    assert meta is not None
    for name in (
        "digits",
        "point",
        "trade_contract_size",
        "volume_min",
        "volume_step",
        "volume_max",
        "trade_mode",
        "filling_mode",
        "trade_stops_level",
        "currency_base",
        "currency_profit",
    ):
        assert meta[name] == getattr(info, name), name
    assert meta["filling_modes"] == ["FOK", "IOC"] and meta["trade_mode_name"] == "FULL"
    assert lake.symbol_point(s.lake_dir, "EURUSD") == 1e-05
    assert (
        lake.symbol_point(s.lake_dir, "GBPUSD") is None
        and lake.read_symbol_meta(s.lake_dir, "GBPUSD") is None
    )
    path = Path(res.symbol_meta or "")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    ingest(s, "EURUSD", "H1", START, END, terminal=term)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # unchanged: not rewritten
    assert not list(path.parent.glob("*.tmp"))
    # features and labels scale spreads by the broker's point once it is stored, not the simulator's table
    lake.write_symbol_meta(s.lake_dir, "EURUSD", {**meta, "point": 0.0001, "digits": 4})
    assert store.symbol_point(s, "EURUSD") == 0.0001 and store.symbol_point(s, "GBPUSD") == 1e-05
