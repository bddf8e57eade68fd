"""Data trust at the edge, without a platform: the importer's row checks on terminal bars, the
missing-column rule, the "nothing done" verdicts and the export auto-detection."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from engine.mt5.exports import (
    MissingColumnError,
    check_rates,
    parse_column_source,
    read_export,
    rule_of,
)
from engine.mt5.protocol import RATES_DTYPE
from feature_repo.pipeline.ingest import (
    IngestResult,
    NoBarsError,
    autodetect_exports,
    check_ingested,
    explain_empty,
)
from titanovax.settings import PlatformSettings

HEADER = "time,open,high,low,close,tick_volume,spread,real_volume"
T0 = int(datetime(2026, 1, 7, 10, tzinfo=UTC).timestamp())


def _rates(rows: list[tuple]) -> np.ndarray:
    return np.array(rows, dtype=RATES_DTYPE)


def test_check_rates_when_a_terminal_answers_bad_rows_then_they_are_kept_out_with_their_reason() -> (
    None
):
    rates = _rates(
        [
            (T0, 1.1, 1.2, 1.0, 1.15, 10, 12, 0),  # 1 ok
            (T0 + 300, 1.1, 1.2, 1.0, float("nan"), 10, 12, 0),  # 2 NaN close
            (T0 + 600, 1.1, 1.0, 1.2, 1.15, 10, 12, 0),  # 3 high < low
            (T0 + 900, 1.1, 1.2, 1.0, 1.15, 10, -4, 0),  # 4 negative spread
            (T0 + 1200, 1.1, 1.2, 1.0, 1.15, 10, 12, 0),  # 5 ok
            (T0 + 1200, 1.1, 1.2, 1.0, 1.16, 10, 12, 0),  # 6 same time, other close
            (T0 + 1200, 1.1, 1.2, 1.0, 1.15, 10, 12, 0),  # 7 identical duplicate
            (T0 + 1260, 1.1, 1.2, 1.0, 1.15, 10, 12, 0),  # 8 off the M5 grid
            (T0 + 1500, 0.0, 1.2, 0.0, 1.15, 10, 12, 0),  # 9 non-positive price
        ]
    )

    good, issues = check_rates(rates, "M5")

    assert good["time"].tolist() == [T0, T0 + 1200]
    by_line = {i.line_no: (i.rule, i.reason, i.repaired) for i in issues}
    assert by_line == {
        2: ("rejected_line", "bad price (not a finite number)", False),
        3: ("ohlc_consistency", "high < low", False),
        4: ("spread_non_negative", "negative spread", False),
        6: ("duplicate_conflict", "duplicate time with different values than line 5", False),
        7: ("import_repaired", "identical duplicate of line 5 dropped", True),
        8: ("timeframe_alignment", "time is not on the M5 grid", False),
        9: ("ohlc_consistency", "non-positive price", False),
    }
    assert all(i.server_time is not None for i in issues)


def test_check_rates_when_rows_are_out_of_order_then_sorted_and_each_late_row_is_recorded() -> None:
    rates = _rates(
        [(T0 + 300, 1.1, 1.2, 1.0, 1.15, 10, 12, 0), (T0, 1.1, 1.2, 1.0, 1.15, 10, 12, 0)]
    )
    good, issues = check_rates(rates, "M5")
    assert good["time"].tolist() == [T0, T0 + 300]
    assert [(i.line_no, i.rule, i.repaired) for i in issues] == [(2, "import_repaired", True)]


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("column", ["spread", "tick_volume"])
def test_read_export_when_a_cost_or_activity_column_is_missing_then_refused_unless_filled(
    tmp_path: Path, column: str
) -> None:
    names = HEADER.split(",")
    k = names.index(column)
    header = ",".join(n for i, n in enumerate(names) if i != k)
    row = ",".join(
        v
        for i, v in enumerate(["2026-01-07 10:00:00", "1.1", "1.2", "1.0", "1.15", "10", "12", "0"])
        if i != k
    )
    p = _write(tmp_path, "EURUSD_M5__x.csv", f"{header}\n{row}\n")

    with pytest.raises(MissingColumnError, match=f"no {column} column"):
        read_export(p)
    e = read_export(p, fill={column: 7})

    assert e.filled == {column: 7} and int(e.rates[column][0]) == 7


def test_column_source_when_parsed_then_only_documented_sources_are_accepted() -> None:
    assert parse_column_source("constant:12") == ("constant", 12)
    assert parse_column_source("symbol_info") == ("symbol_info", None)
    for bad in ("constant:-1", "constant:x", "zero", ""):
        with pytest.raises(ValueError, match="constant:N"):
            parse_column_source(bad)


def test_read_export_when_a_line_cannot_be_read_then_it_lands_on_the_day_of_the_line_before(
    tmp_path: Path,
) -> None:
    text = "\n".join(
        [
            HEADER,
            "2026-01-07 23:55:00,1.1,1.2,1.0,1.15,10,12,0",
            "garbage",
            "2026-01-08 00:00:00,1.1,1.2,1.0,1.15,10,12,0",
        ]
    )
    e = read_export(_write(tmp_path, "EURUSD_M5__x.csv", text + "\n"))
    (issue,) = e.issues
    assert (issue.line_no, issue.rule, issue.server_time) == (3, "rejected_line", T0 + 50100)
    assert rule_of(issue.reason) == "rejected_line"


def _result(rows: int, closed: bool, reason: str | None) -> IngestResult:
    r = IngestResult("EURUSD", "M5", "", "", rows)
    r.empty_reason, r.market_closed = reason, closed
    return r


def test_check_ingested_when_the_market_was_closed_then_an_expected_skip() -> None:
    why, expected = explain_empty(
        "EURUSD", "M5", datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 11, tzinfo=UTC)
    )
    assert expected and "market is closed (weekend)" in why
    with pytest.raises(NoBarsError) as exc:
        check_ingested([_result(0, True, why)])
    assert exc.value.expected


def test_check_ingested_when_a_symbol_has_no_bars_on_an_open_day_then_an_error() -> None:
    why, expected = explain_empty(
        "EURUSD", "M5", datetime(2026, 1, 7, tzinfo=UTC), datetime(2026, 1, 8, tzinfo=UTC)
    )
    assert not expected and "although the market was open" in why
    with pytest.raises(NoBarsError) as exc:
        check_ingested([_result(288, False, None), _result(0, False, why)])
    assert not exc.value.expected
    check_ingested([_result(288, False, None)])  # bars: nothing to say


def test_christmas_day_when_explained_then_a_holiday() -> None:
    why, expected = explain_empty(
        "EURUSD", "H1", datetime(2025, 12, 25, tzinfo=UTC), datetime(2025, 12, 26, tzinfo=UTC)
    )
    assert expected and "(holiday)" in why


def _export_rows() -> str:
    return HEADER + "\n" + "2026-01-07 10:00:00,1.1,1.2,1.0,1.15,10,12,0\n"


def test_autodetect_when_the_folder_holds_one_pair_and_nothing_is_configured_then_it_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("TX_SYMBOLS", "TX_TIMEFRAME"):  # unset now, and restored (unset) afterwards
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    _write(tmp_path, "GBPUSD_M5__only.csv", _export_rows())

    s, note = autodetect_exports(PlatformSettings(home=tmp_path / "h", mt5_exports=tmp_path))

    assert (s.symbols, s.timeframe) == (["GBPUSD"], "M5")
    assert note is not None and "GBPUSD M5" in note and "broker time rule" in note


def test_autodetect_when_symbols_are_unset_then_every_symbol_at_the_timeframe_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TX_SYMBOLS", raising=False)
    monkeypatch.setenv("TX_TIMEFRAME", "H1")
    for name in ("EURUSD_H1__a.csv", "USDJPY_H1__b.csv", "XAUUSD_M5__c.csv"):
        _write(tmp_path, name, _export_rows().replace("10:00", "11:00"))

    s, note = autodetect_exports(PlatformSettings(home=tmp_path / "h", mt5_exports=tmp_path))

    assert (s.symbols, s.timeframe) == (["EURUSD", "USDJPY"], "H1") and note


def test_autodetect_when_configured_pairs_are_there_then_nothing_changes_and_absent_ones_are_an_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path, "EURUSD_M5__a.csv", _export_rows())
    _write(tmp_path, "GBPUSD_M5__b.csv", _export_rows())
    s = PlatformSettings(home=tmp_path / "h", mt5_exports=tmp_path, symbols=["EURUSD"])
    assert autodetect_exports(s) == (s, None)
    with pytest.raises(ValueError, match="no export for"):
        autodetect_exports(s.model_copy(update={"symbols": ["USDJPY"]}))


def _gbpusd_m5_folder(folder: Path) -> Path:
    rows = [HEADER]
    t = datetime(2026, 1, 7, tzinfo=UTC)
    for i in range(2 * 288):
        ts = datetime.fromtimestamp(t.timestamp() + 300 * i, UTC)
        rows.append(f"{ts:%Y-%m-%d %H:%M:%S},1.27,1.2705,1.2695,1.2702,{40 + i % 7},9,0")
    _write(folder, "GBPUSD_M5__only.csv", "\n".join(rows) + "\n")
    return folder


def _cli_env(tmp_path: Path, exports: Path) -> dict[str, str | None]:
    return {
        "TX_HOME": str(tmp_path / "home"),
        "TX_MT5_MODE": "sim",
        "TX_MT5_EXPORTS": str(exports),
        "TX_SYMBOLS": None,  # unset
        "TX_TIMEFRAME": None,
        "TX_BROKER_TZ": "fixed:+0",
    }


def test_tx_ingest_when_the_folder_holds_only_gbpusd_m5_then_it_is_used_and_the_choice_printed(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from titanovax.cli import app

    env = _cli_env(tmp_path, _gbpusd_m5_folder(tmp_path / "exports"))
    res = CliRunner().invoke(
        app, ["ingest", "--start", "2026-01-07", "--end", "2026-01-08"], env=env
    )

    assert res.exit_code == 0, res.stderr
    assert "auto-detected" in res.stderr and "GBPUSD M5" in res.stderr
    assert "broker time rule the detector suggests" in res.stderr
    (out,) = json.loads(res.stdout)
    assert (out["symbol"], out["timeframe"], out["rows"]) == ("GBPUSD", "M5", 288)


def test_tx_ingest_when_the_interval_is_a_saturday_then_exit_1_with_one_line(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from titanovax.cli import app

    env = _cli_env(tmp_path, _gbpusd_m5_folder(tmp_path / "exports"))
    res = CliRunner().invoke(
        app, ["data", "ingest", "--start", "2026-01-10", "--end", "2026-01-11"], env=env
    )

    assert res.exit_code == 1
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith(("warning:", "error:"))]
    assert line.startswith("warning: no bars for GBPUSD M5") and "(weekend)" in line


def test_demo_plan_when_the_folder_holds_only_gbpusd_m5_then_the_demo_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from titanovax.demo import _autodetect, plan_span

    for var in ("TX_SYMBOLS", "TX_TIMEFRAME"):  # unset now, and restored (unset) afterwards
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    exports = _gbpusd_m5_folder(tmp_path / "exports")
    s = PlatformSettings(home=tmp_path / "h", mt5_exports=exports, broker_tz="fixed:+0")

    detected = _autodetect(s)

    assert detected is not None and (detected[0].symbols, detected[0].timeframe) == (
        ["GBPUSD"],
        "M5",
    )
    assert os.environ["TX_SYMBOLS"] == "GBPUSD"  # the DAG runs read the choice too
    plan = plan_span(detected[0], history_days=1)
    assert plan.engine_end.weekday() == 5


def test_tx_ingest_when_the_symbol_has_no_export_then_exit_1_with_one_error_line(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from titanovax.cli import app

    env = {**_cli_env(tmp_path, _gbpusd_m5_folder(tmp_path / "exports")), "TX_TIMEFRAME": "M5"}
    res = CliRunner().invoke(
        app,
        ["ingest", "--start", "2026-01-07", "--end", "2026-01-08", "--symbol", "USDJPY"],
        env=env,
    )

    assert res.exit_code == 1 and not isinstance(res.exception, RuntimeError)
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "USDJPY" in line and "not found" in line
