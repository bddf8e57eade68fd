"""Shadow A/B on a real MLflow registry (tmp dir), real ONNX bundles and a real bar lake: a
challenger whose decisions follow the realised next-bar move is promoted through the gate with
the live Diebold-Mariano evidence in the audit row; one that is worse is retired; too little
or no difference moves nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from feature_repo.pipeline import lake
from tests.integration.test_training_gate import FEATURES, labels, market, register
from titanovax.settings import PlatformSettings
from training.gate import load_bundle
from training.labels import make_labels
from training.models import ModelData, XGBModel
from training.monitor.settings import ModelMonitorSettings
from training.monitor.shadow import ACTOR, shadow_ab
from training.registry import client_for, current_aliases, history, move_aliases

pytestmark = pytest.mark.integration

SYM, TF, POINT = "EURUSD", "M5", 1e-5
N_BARS = 800
CFG = ModelMonitorSettings(shadow_min_bars=200, shadow_alpha=0.01)


MODEL = "tx_shadow_test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One real MLflow registry (tmp dir) for the module, the bundles registered once:
    ``good``, ``bad`` and ``good_again`` (the good model registered a second time)."""
    home = tmp_path_factory.mktemp("registry")
    s = PlatformSettings(
        home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", model_name=MODEL
    )
    train = market(seed=1)
    x, y = train[FEATURES].to_numpy(np.float32), labels(train)
    params = {"n_estimators": 40, "max_depth": 2, "learning_rate": 0.2}
    good = XGBModel(params).fit(ModelData(x, None, y))
    bad = XGBModel(params).fit(ModelData(x, None, 2 - y))  # long when it should short
    window = market(seed=2)
    return {
        "uri": s.tracking_uri,
        "good": register(s, good, window),
        "bad": register(s, bad, window),
        "good_again": register(s, good, window),
    }


@pytest.fixture()
def settings(tmp_path: Path, registry: dict[str, str]) -> PlatformSettings:
    """This test's home (lake, shadow log, audit history) on the module's registry."""
    return PlatformSettings(home=tmp_path, mlflow_tracking_uri=registry["uri"], model_name=MODEL)


def live_market(settings: PlatformSettings, seed: int = 11) -> pd.DataFrame:
    """Bars in the lake (with the symbol's point) and the rows serving scored on them: ``f0``
    is a noisy view of the realised next-bar move, as a good feature would be."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-03-02", periods=N_BARS, freq="5min", tz="UTC")
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 6e-4, N_BARS)))
    bars = pd.DataFrame(
        {
            "time": t,
            "close_time": t + pd.Timedelta(minutes=5),
            "symbol": SYM,
            "timeframe": TF,
            "open": close,
            "high": close * 1.0004,
            "low": close * 0.9996,
            "close": close,
            "tick_volume": 50,
            "spread": 6,
            "real_volume": 0,
            "server_time": (t.astype("int64") // 10**9).astype("int64"),
        }
    )
    for day, part in bars.groupby(bars["time"].dt.date):
        lake.write_partition(settings.lake_dir, part.reset_index(drop=True), SYM, TF, day)
    lake.write_symbol_meta(settings.lake_dir, SYM, {"point": POINT, "digits": 5})
    lab = make_labels(bars, horizon=6, point=POINT)
    n = len(lab)
    lab["f0"] = np.sign(lab["ret_next"]) + rng.normal(0, 1.2, n)
    lab["f1"] = rng.normal(size=n)
    lab["f2"] = rng.normal(size=n)
    return lab


def serving_model(settings: PlatformSettings, version: str) -> Any:
    """The registered bundle as serving holds it (:class:`serving.runtime.LoadedModel`)."""
    import hashlib

    from serving.inference import open_session
    from serving.preprocess import bundle_spec
    from serving.runtime import LoadedModel

    b = load_bundle(settings, version)
    manifest = {
        **b.manifest,
        "classes": ["short", "flat", "long"],
        "positions": [-1, 0, 1],
        "input_name": "input",
        "prob_output": "probabilities",
    }
    return LoadedModel(
        spec=bundle_spec(manifest),
        session=open_session(b.onnx_bytes),
        model_name=settings.model_name,
        model_version=version,
        bundle_sha256=hashlib.sha256(b.onnx_bytes).hexdigest(),
        bentoml_tag=f"{settings.model_name}:v{version}",
        loaded_at="2026-03-02T00:00:00+00:00",
    )


def write_shadow_log(
    settings: PlatformSettings, rows: pd.DataFrame, champion: str, challenger: str
) -> Path:
    """Serving's own shadow path: each bar is one request the champion answers, and the real
    :class:`serving.runtime.ShadowScorer` scores the challenger and appends the JSONL lines."""
    from serving.preprocess import decide
    from serving.request import ParsedRequest
    from serving.runtime import ServingState, ShadowScorer, _ShadowJob

    state = ServingState.of(serving_model(settings, champion), serving_model(settings, challenger))
    path = settings.home / "serving" / "shadow.jsonl"
    scorer = ShadowScorer(path)
    x = rows[FEATURES].to_numpy(np.float32)
    for i, ts in enumerate(rows["event_timestamp"]):
        parsed = ParsedRequest([SYM], [ts.to_pydatetime()], x[i : i + 1], None)
        probs = state.champion.predict(parsed.matrix, None)
        job = _ShadowJob(
            f"r{i}", ts.isoformat(), state, parsed, probs, decide(probs, state.champion.spec)
        )
        scorer.submit(job)
        if i % 50 == 0:  # a retried request: the same bar scored twice, kept once
            scorer.submit(
                _ShadowJob(
                    f"r{i}-retry", ts.isoformat(), state, parsed, probs, job.champion_decisions
                )
            )
    assert scorer.wait_idle(30.0)
    scorer.close()
    assert scorer.written > len(rows) and scorer.dropped == 0
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"outcome": "scored", "symbol": "EUR')  # a torn line of a killed writer
    return path


def setup(
    settings: PlatformSettings, registry: dict[str, str], champion: str, challenger: str
) -> tuple[str, str, pd.DataFrame]:
    rows = live_market(settings)
    champ, chal = registry[champion], registry[challenger]
    move_aliases(
        settings,
        {"champion": champ, "challenger": chal, "previous": None},
        action="manual",
        version=champ,
        evidence={"why": "test setup"},
        actor="test",
    )
    return champ, chal, rows


def run(settings: PlatformSettings, cfg: ModelMonitorSettings = CFG) -> object:
    [r] = shadow_ab(settings=settings, cfg=cfg, now=datetime(2026, 3, 5, tzinfo=UTC))
    return r


def test_shadow_ab_when_the_challenger_follows_the_realised_move_then_promoted_with_live_dm_evidence(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    bad, good, rows = setup(settings, registry, "bad", "good")
    write_shadow_log(settings, rows, bad, good)

    r = run(settings)

    assert r.status == "warn" and "promoted" in r.detail, r.detail  # type: ignore[attr-defined]
    aliases = current_aliases(client_for(settings), settings.model_name)
    assert aliases == {"champion": good, "previous": bad}
    last = history(settings)[-1]
    assert last["action"] == "promote" and last["actor"] == ACTOR and last["version"] == good
    ev = last["evidence"]
    shadow = ev["shadow"]
    assert ev["source"] == "shadow_ab" and ev["reason"].startswith("live shadow A/B")
    assert shadow["n_bars"] == len(rows) >= 200  # every realised bar once, retries dropped
    assert shadow["dm_stat"] > 0 and shadow["dm_p_value"] < 0.01 and shadow["dm_lag"] == 5
    assert shadow["bootstrap_interval"][0] > 0 and shadow["bootstrap_level"] == pytest.approx(0.98)
    assert ev["sharpe_test"] == "dm" and ev["dm_p_value"] == pytest.approx(shadow["dm_p_value"])


def test_shadow_ab_when_the_challenger_is_worse_then_retired_with_an_audit_row(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    good, bad, rows = setup(settings, registry, "good", "bad")
    write_shadow_log(settings, rows, good, bad)

    r = run(settings)

    assert r.status == "warn" and "retired" in r.detail, r.detail  # type: ignore[attr-defined]
    assert current_aliases(client_for(settings), settings.model_name) == {"champion": good}
    last = history(settings)[-1]
    assert last["action"] == "retire" and last["version"] == bad and last["actor"] == ACTOR
    assert last["before"]["challenger"] == bad and "challenger" not in last["after"]
    ev = last["evidence"]
    assert ev["dm_p_value_worse"] < 0.01 and ev["bootstrap_interval"][1] < 0
    assert ev["n_bars"] >= 200 and "dm_stat" in ev


def test_shadow_ab_when_too_few_bars_then_not_enough_evidence_and_nothing_moves(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    bad, good, rows = setup(settings, registry, "bad", "good")
    write_shadow_log(settings, rows.iloc[:120], bad, good)

    r = run(settings)

    assert r.status == "ok" and "not enough evidence" in r.detail, r.detail  # type: ignore[attr-defined]
    assert current_aliases(client_for(settings), settings.model_name) == {
        "champion": bad,
        "challenger": good,
    }
    assert [h["action"] for h in history(settings)] == ["manual"]


def test_shadow_ab_when_the_challenger_decides_like_the_champion_then_no_evidence_and_nothing_moves(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    a, b, rows = setup(settings, registry, "good", "good_again")
    write_shadow_log(settings, rows, a, b)

    r = run(settings)

    assert r.status == "ok" and r.detail.endswith("not enough evidence"), r.detail  # type: ignore[attr-defined]
    assert r.metrics["shadow_bars"] >= 200  # type: ignore[attr-defined]
    assert [h["action"] for h in history(settings)] == ["manual"]


def test_shadow_ab_when_acting_is_off_then_it_reports_but_moves_nothing(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    bad, good, rows = setup(settings, registry, "bad", "good")
    write_shadow_log(settings, rows, bad, good)

    r = run(settings, CFG.model_copy(update={"shadow_act": False}))

    assert "would promote" in r.detail  # type: ignore[attr-defined]
    assert [h["action"] for h in history(settings)] == ["manual"]


def test_shadow_ab_when_no_challenger_then_skipped(settings: PlatformSettings) -> None:
    move_aliases(
        settings, {"challenger": None}, action="manual", version="1", evidence={}, actor="test"
    )
    r = run(settings)
    assert r.status == "skipped" and "no challenger" in r.detail  # type: ignore[attr-defined]


def test_monitor_run_when_shadow_ab_is_registered_then_it_promotes_and_stores_the_row(
    settings: PlatformSettings, registry: dict[str, str]
) -> None:
    from titanovax.monitor import MonitorContext, query_results, run

    bad, good, rows = setup(settings, registry, "bad", "good")
    write_shadow_log(settings, rows, bad, good)

    mr = run(
        MonitorContext(settings, now=datetime(2026, 3, 5, tzinfo=UTC)),
        only=["shadow_ab"],
        actions=lambda ctx, results: [],
        log_mlflow=False,
    )

    assert [r.status for r in mr.results] == ["warn"]
    assert current_aliases(client_for(settings), settings.model_name)["champion"] == good
    [row] = query_results(settings.monitor_db, check="shadow_ab")
    assert "promoted" in row["detail"] and row["subject"] == f"{MODEL}@v{good}"
