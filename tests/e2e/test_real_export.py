"""One run of the data path over a real MT5 export from ../shared/data/raw/."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from feature_repo.pipeline import lake
from feature_repo.pipeline.store import (
    FEATURE_VIEW,
    SEQ_VIEW,
    V2_VIEW,
    feast_apply,
    features_for_range,
)
from feature_repo.pipeline.transforms import (
    FEATURE_NAMES,
    SEQ_CHANNELS,
    SEQ_FIELD,
    SEQ_LEN,
    TREND_V1_FEATURES,
)
from tests.conftest import run_market_data
from titanovax.settings import PlatformSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_real_eurusd_h1_export_when_ingested_then_validated_materialised_and_online_equals_offline(
    raw_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    import redis

    from engine.features import OnlineFeatureReader

    if not (raw_dir / "EURUSD_H1__magiclovexxx_mt5_bot.csv").exists():
        pytest.skip("EURUSD_H1__magiclovexxx_mt5_bot.csv not in ../shared/data/raw")
    base = redis_url.rsplit("/", 1)[0]
    s = PlatformSettings(
        home=tmp_path,
        redis_url=f"{base}/7",
        mt5_exports=raw_dir,
        symbols=["EURUSD"],
        timeframe="H1",
        broker_utc_offset_hours=2,  # the export's server runs on EET/EEST; a fixed +2 is good enough here
    )
    feast_apply(s)
    start, end = datetime(2025, 3, 3, tzinfo=UTC), datetime(2025, 3, 22, tzinfo=UTC)
    run_market_data(s, start, end)

    bars = lake.read_bars(s.lake_dir, "EURUSD", "H1", start, end)
    assert 300 < len(bars) <= 19 * 24
    assert bars["time"].is_monotonic_increasing and bars["time"].is_unique
    assert not s.quarantine_dir.exists()
    # real prices, rounded back from pandas' long-float artefacts to 5 digits
    assert np.allclose(bars["close"], bars["close"].round(5), atol=0, rtol=0)
    assert 1.0 < bars["close"].median() < 1.2

    r = redis.Redis.from_url(s.redis_url)
    offline = features_for_range(s, "EURUSD", "H1", start, end).iloc[-1]
    row = OnlineFeatureReader(
        r, project=s.feast_project, feature_view=FEATURE_VIEW, features=list(TREND_V1_FEATURES)
    ).read("EURUSD")
    assert row.event_time == offline["event_timestamp"].timestamp()
    np.testing.assert_allclose(
        [row.values[f] for f in TREND_V1_FEATURES],
        offline[list(TREND_V1_FEATURES)].to_numpy(float),
        atol=1e-9,
    )
    # trend_v2: all tabular features and the sequence of the same last bar
    v2 = features_for_range(s, "EURUSD", "H1", start, end, view=V2_VIEW).iloc[-1]
    seq = features_for_range(s, "EURUSD", "H1", start, end, view=SEQ_VIEW).iloc[-1]
    manifest = {
        "feature_view": V2_VIEW,
        "features": list(FEATURE_NAMES),
        "sequence": {
            "feature_view": SEQ_VIEW,
            "field": SEQ_FIELD,
            "seq_len": SEQ_LEN,
            "channels": list(SEQ_CHANNELS),
        },
    }
    row2 = OnlineFeatureReader.from_manifest(r, manifest, project=s.feast_project).read("EURUSD")
    assert (
        row2.event_time == v2["event_timestamp"].timestamp() == seq["event_timestamp"].timestamp()
    )
    np.testing.assert_allclose(
        [row2.values[f] for f in FEATURE_NAMES], v2[list(FEATURE_NAMES)].to_numpy(float), atol=1e-9
    )
    assert row2.sequence is not None
    np.testing.assert_array_equal(row2.sequence.ravel(), seq[SEQ_FIELD])
