"""The whole path: lake → Feast → trained ONNX model in MLflow → BentoML over HTTP → engine
decisions on each closed bar, journaled; and a restart that neither loses nor repeats."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from engine.config import RiskLimits
from engine.features import OnlineFeatureReader
from engine.journal import Journal
from engine.loop import Engine
from engine.serving_client import ServingClient
from tests.conftest import Platform
from titanovax.redis_local import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "e2e-serving-token"


@pytest.fixture(scope="module")
def served(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, dict]]:
    from mlflow import MlflowClient

    from serving.importer import import_from_registry
    from serving.server import start_server, stop_server, wait_ready
    from tests.integration.test_training import small_config
    from training.train import build_training_dataset, train_and_register

    tmp = tmp_path_factory.mktemp("e2e")
    s = platform.settings.model_copy(
        update={"mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"}
    )
    as_of = platform.end - timedelta(days=2)
    res = train_and_register(
        s, small_config(), build_training_dataset(s, small_config(), as_of), as_of
    )
    MlflowClient(s.tracking_uri, s.tracking_uri).set_registered_model_alias(
        s.model_name, "e2e", res.version
    )
    imported = import_from_registry(
        s.tracking_uri, s.model_name, "e2e", bentoml_home=tmp / "bentoml"
    )
    port = free_port()
    proc = start_server(
        host="127.0.0.1",
        port=port,
        model_tag=imported.bentoml_tag,
        bentoml_home=str(tmp / "bentoml"),
        log_path=tmp / "serving.log",
        token=TOKEN,
        tracking_uri=s.tracking_uri,
        model_name=s.model_name,
    )
    try:
        wait_ready(
            f"http://127.0.0.1:{port}", 120, proc=proc, log_path=tmp / "serving.log", token=TOKEN
        )
        yield f"http://127.0.0.1:{port}", imported.manifest
    finally:
        stop_server(proc)


def _engine(
    platform: Platform, url: str, manifest: dict, journal: Journal, terminal, now: list[int]
) -> Engine:
    s = platform.settings
    return Engine(
        terminal=terminal,
        features=OnlineFeatureReader.from_manifest(
            redis.Redis.from_url(s.redis_url), manifest, project=s.feast_project
        ),
        model=ServingClient(url, timeout_s=5.0, token=TOKEN),
        journal=journal,
        limits=RiskLimits(
            max_position_lots=1.0, max_consecutive_losses=0, daily_loss_limit=0.0, max_drawdown=0.0
        ),
        lots=0.1,
        magic=777,
        clock=lambda: float(now[0]),
    )


def test_engine_when_bars_close_then_every_decision_is_journaled_and_a_restart_repeats_nothing(
    platform: Platform, served: tuple[str, dict], tmp_path: Path, redis_url: str
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal
    from feature_repo.pipeline.stream import FeaturePusher

    url, manifest = served
    base = redis_url.rsplit("/", 1)[0]
    s = platform.settings.model_copy(update={"redis_url": f"{base}/8"})
    p = Platform(s, platform.start, platform.end)
    now = [int(platform.end.timestamp())]  # Monday after the lake's last day: unseen bars
    terminal = open_platform_terminal(s, clock=lambda: now[0])
    pusher = FeaturePusher(s, terminal)
    step = 300
    first = int(platform.end.timestamp()) + 6 * 3600  # Monday 06:00 UTC, market open
    closes = [first + i * step for i in range(40)]

    def set_time(t: int) -> None:
        now[0] = t

    journal_path = tmp_path / "journal.sqlite"
    engine = _engine(p, url, manifest, Journal(journal_path), terminal, now)
    engine.replay(closes[:25], ["EURUSD"], set_time, before_bar=pusher.push)
    rows = engine.journal.rows()
    assert len(rows) == 25
    # decided, none refused: the bundle's learned policy may abstain (a first-class outcome)
    decided = ("sent", "hold", "abstain")
    assert all(r["verdict"] in decided for r in rows), [
        r["reason"] for r in rows if r["verdict"] not in decided
    ]
    assert all(r["feature_time"] == r["bar_close"] for r in rows)
    assert all({"feature_ms", "predict_ms", "total_ms"} <= set(r["latency_ms"]) for r in rows)
    assert not engine.journal.intents("pending")  # every write-ahead intent got its result
    assert len({r["model_version"] for r in rows}) == 1 and rows[0]["model_version"]
    # explain every decision: what serving said is journaled, contributions come after
    for r in rows:
        assert set(r["probabilities"]) == {"short", "flat", "long"}
        assert [m["name"] for m in r["explanation"]["members"]] == ["xgb"]
        assert r["explanation"]["members"][0]["weight"] == 1.0
        assert list(r["features"]) == list(manifest["features"])
    from engine.explain_worker import ExplainClient, ExplainWorker

    worker = ExplainWorker(journal_path, engine.journal.scope, ExplainClient(url, token=TOKEN))
    assert worker.drain(120) and worker.stored == 25
    rows = engine.journal.rows()  # now with the worker's contributions
    for r in rows:
        c = r["contributions"]
        assert set(c["contributions"]) == set(manifest["features"]), c
        assert sum(c["contributions"].values()) + c["base_value"] == pytest.approx(
            c["margin"], abs=1e-4
        )
    sent_before = [r for r in rows if r["verdict"] == "sent"]
    deals_before = len(terminal.history_deals_get(0, 2**31) or ())
    engine.journal.close()

    # restart: a new engine on the same journal replays the whole span
    engine2 = _engine(p, url, manifest, Journal(journal_path), terminal, now)
    engine2.replay(closes, ["EURUSD"], set_time, before_bar=pusher.push)
    rows2 = engine2.journal.rows()
    assert len(rows2) == 40 and len({r["bar_close"] for r in rows2}) == 40
    assert [
        r for r in rows2 if r["bar_close"] in closes[:25] and r["verdict"] == "sent"
    ] == sent_before
    new_sent = [r for r in rows2 if r["bar_close"] in closes[25:] and r["verdict"] == "sent"]
    deals_after = len(terminal.history_deals_get(0, 2**31) or ())
    assert deals_after - deals_before == sum(len(r["order_request"]["orders"]) for r in new_sent)
    assert engine2.stats.latencies_ms and len(engine2.stats.latencies_ms) == 15


def test_engine_when_features_are_stale_then_it_refuses_with_a_reason(
    platform: Platform, served: tuple[str, dict], tmp_path: Path
) -> None:
    from feature_repo.pipeline.ingest import open_platform_terminal

    url, manifest = served
    now = [int(platform.end.timestamp()) + 8 * 3600]
    terminal = open_platform_terminal(platform.settings, clock=lambda: now[0])
    engine = _engine(platform, url, manifest, Journal(tmp_path / "j.sqlite"), terminal, now)
    rec = engine.on_bar("EURUSD", now[0])  # Redis holds Friday's last bar, not this one
    assert rec is not None and rec.verdict == "refused" and rec.reason.startswith("stale_features")
