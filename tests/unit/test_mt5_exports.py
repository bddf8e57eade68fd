"""Importers for MT5 exports (engine.mt5.exports)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from engine.mt5.exports import parse_export_name, read_export, scan_exports
from engine.mt5.protocol import RATES_DTYPE
from tests.conftest import raw_exports_dir

pytestmark = pytest.mark.unit

RAW = raw_exports_dir()  # ../shared/data/raw beside the checkout, or TX_TEST_RAW_EXPORTS

# file, symbol, tf, rows, first bar, last bar (server time), digits, format, long-float rows
# (from /work/shared/data/SOURCES.md)
REAL_FILES = [
    (
        "EURUSD_H1__magiclovexxx_mt5_bot.csv",
        "EURUSD",
        "H1",
        12_000,
        "2024-05-15 10:00",
        "2026-04-23 07:00",
        5,
        "copy_rates",
        1_996,
    ),
    (
        "EURUSD_M15__magiclovexxx_mt5_bot.csv",
        "EURUSD",
        "M15",
        48_000,
        "2024-05-15 08:00",
        "2026-04-23 07:15",
        5,
        "copy_rates",
        7_650,
    ),
    (
        "EURUSD_M5__gordKeys_trading_system.csv",
        "EURUSD",
        "M5",
        20_000,
        "2026-03-26 17:00",
        "2026-07-02 15:35",
        5,
        "copy_rates",
        4_258,
    ),
    (
        "GBPUSD_H1__QuocHoang2009_TradingData.csv",
        "GBPUSD",
        "H1",
        45_492,
        "2014-01-14 00:00",
        "2024-05-03 17:00",
        5,
        "copy_rates",
        16_398,
    ),
    (
        "USDJPY_H1__Chikwui_Trading-bott.csv",
        "USDJPY",
        "H1",
        6_230,
        "2024-07-15 18:00",
        "2025-07-15 17:00",
        3,
        "copy_rates",
        None,
    ),
    (
        "XAUUSD_M1__magiclovexxx_mt5_bot.csv",
        "XAUUSD",
        "M1",
        40_000,
        "2026-03-12 18:16",
        "2026-04-23 19:32",
        2,
        "copy_rates",
        None,
    ),
    (
        "XAUUSD_M5__budimanlai_forex-tick.csv",
        "XAUUSD",
        "M5",
        58_230,
        "2025-01-02 01:00",
        "2025-10-27 22:55",
        2,
        "history_center",
        None,
    ),
]

HEADER = "time,open,high,low,close,tick_volume,spread,real_volume"


def _ts(text: str) -> int:
    return int((datetime.fromisoformat(text) - datetime(1970, 1, 1)).total_seconds())


def _write(tmp_path: Path, name: str, text: str, newline: str = "\n") -> Path:
    p = tmp_path / name
    p.write_bytes(text.replace("\n", newline).encode())
    return p


@pytest.fixture(scope="module")
def raw_dir() -> Path:
    if not RAW.is_dir():
        pytest.skip(f"real MT5 exports not available: {RAW} does not exist (../shared/data/raw)")
    return RAW


@pytest.mark.parametrize(
    ("name", "symbol", "tf", "rows", "first", "last", "digits", "fmt", "long_floats"),
    REAL_FILES,
    ids=[f[0].split("__")[0] for f in REAL_FILES],
)
def test_real_export_read_then_all_rows_parsed_and_rounded(
    raw_dir: Path,
    name: str,
    symbol: str,
    tf: str,
    rows: int,
    first: str,
    last: str,
    digits: int,
    fmt: str,
    long_floats: int | None,
) -> None:
    path = raw_dir / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {raw_dir}")
    e = read_export(path)
    assert (e.symbol, e.timeframe, e.format, e.digits) == (symbol, tf, fmt, digits)
    assert e.rejected == []
    assert len(e.rates) == rows
    assert e.rates.dtype == RATES_DTYPE
    assert e.rates["time"][0] == _ts(first)
    assert e.rates["time"][-1] == _ts(last)
    assert np.all(np.diff(e.rates["time"]) > 0)
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(np.round(e.rates[col], digits), e.rates[col])
    if long_floats is not None:
        assert e.rounded_rows == long_floats
    assert np.all(e.rates["high"] >= np.maximum(e.rates["open"], e.rates["close"]))
    assert np.all(e.rates["real_volume"] == 0)
    assert np.all(e.rates["tick_volume"] > 0)


def test_real_export_long_float_then_rounded_to_five_digits(raw_dir: Path) -> None:
    e = read_export(raw_dir / "GBPUSD_H1__QuocHoang2009_TradingData.csv")
    # first data row: 1389657600,1.6387800000000001,1.6463299999999998,1.63669,1.64318,...
    row = e.rates[0]
    assert row["time"] == 1_389_657_600
    assert (row["open"], row["high"], row["low"], row["close"]) == (
        1.63878,
        1.64633,
        1.63669,
        1.64318,
    )
    assert (row["tick_volume"], row["spread"]) == (53_646, 0)


def test_real_folder_scanned_then_every_file_keyed(raw_dir: Path) -> None:
    found = scan_exports(raw_dir)
    assert set(found) == {(f[1], f[2]) for f in REAL_FILES}
    assert found[("XAUUSD", "M5")].name == "XAUUSD_M5__budimanlai_forex-tick.csv"


def test_malformed_rows_then_kept_out_and_reported(tmp_path: Path) -> None:
    text = "\n".join(
        [
            HEADER,
            "2025-01-02 10:00:00,1.03500,1.03600,1.03400,1.03550,100,12,0",  # 2 ok
            "2025-01-02 11:00:00,1.03550,abc,1.03400,1.03500,100,12,0",  # 3 bad number
            "2025-01-02 12:00:00,1.03500,1.03600",  # 4 too few fields
            "2025-13-02 13:00:00,1.03500,1.03600,1.03400,1.03550,100,12,0",  # 5 bad time
            "2025-01-02 14:00:00,1.03500,1.03400,1.03600,1.03550,100,12,0",  # 6 high < low
            "2025-01-02 10:00:00,1.03500,1.03600,1.03400,1.03550,100,12,0",  # 7 identical dup
            "",  # 8 empty
            "2025-01-02 15:30:00,1.03500,1.03600,1.03400,1.03550,100,12,0",  # 9 off the H1 grid
            "2025-01-02 16:00:00,1.03500,1.03600,1.03400,1.03550,-5,12,0",  # 10 negative volume
            "2025-01-02 17:00:00,1.03500,1.03600,1.03400,1.03550,100,12,0",  # 11 ok
            "2025-01-02 18:00:00,1.03500,1.03500,1.03400,1.03550,100,12,0",  # 12 high < close
        ]
    )
    e = read_export(_write(tmp_path, "EURUSD_H1__test.csv", text))
    assert len(e.rates) == 2
    np.testing.assert_array_equal(
        e.rates["time"], [_ts("2025-01-02 10:00"), _ts("2025-01-02 17:00")]
    )
    by_line = {ln: (raw, reason) for ln, raw, reason in e.rejected}
    assert sorted(by_line) == [3, 4, 5, 6, 8, 9, 10, 12]
    assert "bad high 'abc'" in by_line[3][1]
    assert "fields" in by_line[4][1]
    assert "bad time" in by_line[5][1]
    assert "high < low" in by_line[6][1]
    assert [(r.line_no, r.reason, r.rule) for r in e.repairs] == [
        (7, "identical duplicate of line 2 dropped", "import_repaired")
    ]
    assert "empty line" in by_line[8][1]
    assert "H1 grid" in by_line[9][1]
    assert "negative tick_volume" in by_line[10][1]
    assert "high < max(open, close)" in by_line[12][1]
    assert by_line[3][0] == "2025-01-02 11:00:00,1.03550,abc,1.03400,1.03500,100,12,0"


def test_epoch_time_csv_then_times_kept_as_server_epoch(tmp_path: Path) -> None:
    text = HEADER + "\n1714752000,1.25000,1.25100,1.24900,1.25050,1500,9,0\n"
    text += "1714755600,1.2505000000000002,1.2510000000000001,1.24999,1.2507,1400,10,0\n"
    e = read_export(_write(tmp_path, "GBPUSD_H1__epoch.csv", text))
    np.testing.assert_array_equal(e.rates["time"], [1_714_752_000, 1_714_755_600])
    assert e.rates["open"][1] == 1.2505 and e.rates["high"][1] == 1.251
    assert e.rounded_rows == 1


def test_history_center_tsv_crlf_then_parsed(tmp_path: Path) -> None:
    text = (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
        "2025.01.02\t01:00:00\t2624.81\t2625.07\t2624.25\t2625.00\t124\t0\t43\n"
        "2025.01.02\t01:05:00\t2625.02\t2625.63\t2624.35\t2624.97\t173\t0\t44\n"
    )
    e = read_export(_write(tmp_path, "XAUUSD_M5_202501020100_202501020105.csv", text, "\r\n"))
    assert (e.symbol, e.timeframe, e.format, e.digits) == ("XAUUSD", "M5", "history_center", 2)
    assert e.rejected == []
    np.testing.assert_array_equal(
        e.rates["time"], [_ts("2025-01-02 01:00"), _ts("2025-01-02 01:05")]
    )
    assert e.rates[1]["close"] == 2624.97
    assert (e.rates[0]["tick_volume"], e.rates[0]["spread"], e.rates[0]["real_volume"]) == (
        124,
        43,
        0,
    )


def test_history_center_utf16_d1_without_time_column_then_parsed(tmp_path: Path) -> None:
    text = (
        "<DATE>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\r\n"
        "2025.01.02\t1.03500\t1.03900\t1.03100\t1.03550\t90000\t0\t8\r\n"
    )
    p = tmp_path / "EURUSD_D1.csv"
    p.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    e = read_export(p)
    assert e.rates["time"].tolist() == [_ts("2025-01-02 00:00")]
    assert e.rejected == []


def test_crlf_and_lf_copy_rates_then_same_result(tmp_path: Path) -> None:
    text = (
        HEADER + "\n2024-05-15 10:00:00,1.08294,1.08316,1.08243,1.0825,2597,18,0\n"
        "2024-05-15 11:00:00,1.08249,1.08337,1.08237,1.08289,2224,18,0\n"
    )
    crlf = read_export(_write(tmp_path / "", "EURUSD_H1__crlf.csv", text, "\r\n"))
    lf = read_export(_write(tmp_path, "EURUSD_H1__lf.csv", text))
    np.testing.assert_array_equal(crlf.rates, lf.rates)
    assert crlf.rejected == [] and len(crlf.rates) == 2


def test_extra_trailing_columns_then_ignored(tmp_path: Path) -> None:
    text = (
        HEADER + ",return,rsi,signal\n"
        "2024-07-15 18:00:00,157.858,157.929,157.12,157.683,17426,68,0,,,0\n"
        "2024-07-15 19:00:00,157.683,157.989,157.682,157.886,10408,68,0,0.00128,,0\n"
    )
    e = read_export(_write(tmp_path, "USDJPY_H1__extra.csv", text))
    assert len(e.rates) == 2 and e.rejected == []
    assert e.digits == 3


def test_pandas_index_column_and_quotes_then_found_by_name(tmp_path: Path) -> None:
    text = ',"time","open","high","low","close","tick_volume","spread","real_volume"\n'
    text += '0,"2024-05-15 10:00:00",1.08294,1.08316,1.08243,1.0825,"2597",18,0\n'
    e = read_export(_write(tmp_path, "EURUSD_H1__indexed.csv", text))
    assert e.rejected == []
    assert e.rates[0]["tick_volume"] == 2597


def test_unknown_symbol_then_digits_inferred_from_data(tmp_path: Path) -> None:
    text = HEADER + "\n2025-01-02 10:00:00,0.8300000000000001,0.8312,0.82951,0.83,500,15,0\n"
    e = read_export(_write(tmp_path, "EURGBP_M15__x.csv", text))
    assert e.digits == 5
    assert e.rates[0]["open"] == 0.83


def test_explicit_symbol_and_timeframe_then_name_not_needed(tmp_path: Path) -> None:
    text = HEADER + "\n2025-01-02 10:00:00,1.1,1.2,1.0,1.15,5,1,0\n"
    p = _write(tmp_path, "whatever.csv", text)
    with pytest.raises(ValueError, match="symbol and timeframe"):
        read_export(p)
    e = read_export(p, "EURUSD", "h1")
    assert (e.symbol, e.timeframe) == ("EURUSD", "H1")


def test_header_without_prices_then_value_error(tmp_path: Path) -> None:
    p = _write(tmp_path, "EURUSD_H1__bad.csv", "time,bid,ask\n2025-01-02 10:00:00,1.1,1.2\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_export(p)


def test_rows_out_of_order_then_sorted(tmp_path: Path) -> None:
    text = (
        HEADER + "\n2025-01-02 11:00:00,1.1,1.2,1.0,1.15,5,1,0\n"
        "2025-01-02 10:00:00,1.1,1.2,1.0,1.15,5,1,0\n"
    )
    e = read_export(_write(tmp_path, "EURUSD_H1__rev.csv", text))
    assert np.all(np.diff(e.rates["time"]) > 0) and len(e.rates) == 2


def test_export_names_then_symbol_and_timeframe_parsed(tmp_path: Path) -> None:
    assert parse_export_name("EURUSD_H1__magiclovexxx_mt5_bot.csv") == ("EURUSD", "H1")
    assert parse_export_name("XAUUSD_M5_202501020100_202510272255.csv") == ("XAUUSD", "M5")
    assert parse_export_name("GBPUSD_m15.csv") == ("GBPUSD", "M15")
    assert parse_export_name("notes.csv") is None
    _write(tmp_path, "EURUSD_H1__a.csv", HEADER + "\n")
    _write(tmp_path, "EURUSD_H1__b.csv", HEADER + "\n")
    _write(tmp_path, "README.md", "x")
    found = scan_exports(tmp_path)
    assert found == {("EURUSD", "H1"): tmp_path / "EURUSD_H1__a.csv"}
    with pytest.raises(FileNotFoundError):
        scan_exports(tmp_path / "missing")


def test_epoch_time_written_as_float_then_read_as_epoch_seconds(tmp_path: Path) -> None:
    text = HEADER + "\n1714752000.0,1.25000,1.25100,1.24900,1.25050,1500,9,0\n"
    text += "1714755600000.0,1.25050,1.25100,1.24999,1.25070,1400,10,0\n"  # milliseconds
    e = read_export(_write(tmp_path, "GBPUSD_H1__float_epoch.csv", text))
    assert e.rejected == []
    np.testing.assert_array_equal(e.rates["time"], [1_714_752_000, 1_714_755_600])


def test_semicolon_export_with_decimal_commas_then_prices_parsed(tmp_path: Path) -> None:
    text = "time;open;high;low;close;tick_volume;spread;real_volume\n"
    text += "2024-05-15 10:00:00;1,08294;1,08316;1,08243;1,0825;2597;18;0\n"
    text += "2024-05-15 11:00:00;1,08249;1,08337;1,08237;1,08289000000001;2224;18;0\n"
    e = read_export(_write(tmp_path, "EURUSD_H1__eu.csv", text, "\r\n"))
    assert e.rejected == [] and len(e.rates) == 2
    assert e.rates["open"].tolist() == [1.08294, 1.08249] and e.rates["close"][1] == 1.08289
    assert e.rounded_rows == 1


def test_blank_lines_after_the_data_then_ignored_not_rejected(tmp_path: Path) -> None:
    text = HEADER + "\n2024-05-15 10:00:00,1.08294,1.08316,1.08243,1.0825,2597,18,0\n\n\n"
    e = read_export(_write(tmp_path, "EURUSD_H1__blank.csv", text, "\r\n"))
    assert len(e.rates) == 1 and e.rejected == []
    inner = HEADER + "\n2024-05-15 10:00:00,1.08294,1.08316,1.08243,1.0825,2597,18,0\n\n"
    inner += "2024-05-15 11:00:00,1.08249,1.08337,1.08237,1.08289,2224,18,0\n"
    e2 = read_export(_write(tmp_path, "EURUSD_H1__inner_blank.csv", inner))
    assert len(e2.rates) == 2 and e2.rejected == [
        (3, "", "empty line")
    ]  # inside the data: reported


def test_history_center_with_float_artefacts_and_an_extra_column_then_parsed(
    tmp_path: Path,
) -> None:
    text = (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\t<NOTE>\n"
        "2024.01.02\t00:00:00\t1.10400000000001\t1.1045\t1.10381\t1.10412\t311\t5\t7\tx\n"
        "2024.01.02\t00:05:00\t1.10412\t1.1049999999999\t1.104\t1.10455\t280\t0\t6\t\n"
    )
    e = read_export(_write(tmp_path, "EURUSD_M5_202401020000_202401020005.csv", text, "\r\n"))
    assert (e.format, e.digits, e.rejected) == ("history_center", 5, [])
    assert e.rates["open"][0] == 1.104 and e.rates["high"][1] == 1.105 and e.rounded_rows == 2
    assert e.rates["real_volume"].tolist() == [5, 0] and e.rates["spread"].tolist() == [7, 6]
    assert e.rates["time"].tolist() == [_ts("2024-01-02 00:00"), _ts("2024-01-02 00:05")]
