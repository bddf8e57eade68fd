"""train_and_promote, weekly: dataset → tune (mapped) → fit → backtest → export → register →
gate → promote → reload serving.

The data interval's end is the "as of" time: the dataset holds only bars whose labels were
known by then. XCom carries references only: the dataset path, the study name, the training
work dir, the model version and the gate decision. Each task calls one function of
:mod:`training`; the tune workers share the Optuna studies (``TX_OPTUNA_STORAGE``; one per
member: XGBoost, and the transformer for an ensemble config) and pass straight through when
the config disables tuning (trend_v1, the demo's fast path); ``fit`` trains with both members'
best parameters.

Scheduled on the feature asset that ``market_data`` updates (or weekly, whichever comes
first), with a minimum interval between trainings: ``dataset`` skips the run when the newest
registered model version is younger than ``TX_TRAIN_MIN_INTERVAL_HOURS``. An asset-triggered
run has no data interval: its "as of" is the end of the market_data interval behind it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable

from titanovax.airflow_tasks import (
    EXPERIMENTS,
    FEATURES_ASSET_NAME,
    FEATURES_ASSET_URI,
    apply_airflow_config,
    notify_task_failure,
)
from titanovax.settings import PlatformSettings

FEATURES = sdk.Asset(name=FEATURES_ASSET_NAME, uri=FEATURES_ASSET_URI)

DOC_MD = """
### train_and_promote

Runs when `market_data` updates the asset `tx_trend_features` (at most once per
`TX_TRAIN_MIN_INTERVAL_HOURS`, Variable `tx_train_min_interval_hours`; a closer update skips
the run) and every Saturday 00:00 UTC. The data interval's end is the *as of* time.

dataset → tune_plan → tune (mapped, one task per worker on one Optuna study) → tuned → fit →
backtest → export (ONNX + parity) → register (MLflow) → gate → promote (alias `champion`,
audited) → reload_serving (`POST $TX_SERVING_URL/v1/admin/reload`).

Param `experiment`: one of the configs in `training/configs/` or a path to a YAML config.
A failed task is logged and posted to `TX_DAG_FAILURE_WEBHOOK_URL` (docs/stack.md).
"""


def _cfg(params: dict | None):  # type: ignore[no-untyped-def]
    from training.config import load_config

    return load_config((params or {})["experiment"])


@sdk.dag(
    dag_id="train_and_promote",
    # a feature update, or Saturdays (markets closed), whichever comes first
    schedule=sdk.AssetOrTimeSchedule(
        timetable=CronDataIntervalTimetable("0 0 * * 6", timezone="UTC"), assets=FEATURES
    ),
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["training"],
    params={
        "experiment": sdk.Param(
            PlatformSettings().train_experiment,
            type="string",
            anyOf=[{"enum": list(EXPERIMENTS)}, {"pattern": r"\.ya?ml$"}],
            examples=list(EXPERIMENTS),
            description="an experiment config of training/configs, or a path to a YAML config",
        )
    },
    default_args={
        "retries": 1,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "pre_execute": apply_airflow_config,
        "on_failure_callback": notify_task_failure,
    },
    doc_md=DOC_MD,
)
def train_and_promote() -> None:
    @sdk.task
    def dataset(
        params: dict | None = None,
        data_interval_end: datetime | None = None,
        dag_run: Any = None,
    ) -> str:
        from titanovax.airflow_tasks import run_as_of, skip_unless_training_due
        from titanovax.settings import PlatformSettings
        from training.train import build_training_dataset

        skip_unless_training_due(dag_run.run_after)
        data_interval_end = run_as_of(data_interval_end)

        return build_training_dataset(PlatformSettings(), _cfg(params), data_interval_end)

    @sdk.task
    def tune_plan(path: str, params: dict | None = None) -> list[dict]:
        from titanovax.settings import PlatformSettings
        from training.tune import plan_workers

        return plan_workers(PlatformSettings(), _cfg(params), path)

    @sdk.task
    def tune(
        job: dict, params: dict | None = None, data_interval_end: datetime | None = None
    ) -> int:
        from titanovax.airflow_tasks import run_as_of
        from titanovax.settings import PlatformSettings
        from training.tune import run_planned_worker

        data_interval_end = run_as_of(data_interval_end)

        return run_planned_worker(PlatformSettings(), _cfg(params), job, data_interval_end)

    @sdk.task
    def tuned(path: str, done: list[int], params: dict | None = None) -> dict:
        from titanovax.settings import PlatformSettings
        from training.tune import summarise

        return summarise(PlatformSettings(), _cfg(params), path, sum(done))

    @sdk.task
    def fit(
        path: str, best: dict, params: dict | None = None, data_interval_end: datetime | None = None
    ) -> str:
        from titanovax.airflow_tasks import run_as_of
        from titanovax.settings import PlatformSettings
        from training.train import fit_step

        data_interval_end = run_as_of(data_interval_end)

        return fit_step(
            PlatformSettings(),
            _cfg(params),
            path,
            data_interval_end,
            params=best.get("params") or None,
            transformer_params=best.get("transformer_params") or None,
        )

    @sdk.task
    def backtest(workdir: str) -> str:
        from training.train import backtest_step

        backtest_step(workdir)
        return workdir

    @sdk.task
    def export(workdir: str) -> str:
        from training.train import export_step

        export_step(workdir)
        return workdir

    @sdk.task
    def register(workdir: str) -> dict:
        from titanovax.settings import PlatformSettings
        from training.train import register_step

        return register_step(PlatformSettings(), workdir).to_dict()

    @sdk.task
    def gate(trained: dict) -> dict:
        from titanovax.settings import PlatformSettings
        from training.gate import evaluate_gate

        return evaluate_gate(PlatformSettings(), trained["version"]).to_dict()

    @sdk.task
    def promote(decision: dict) -> dict:
        from titanovax.settings import PlatformSettings
        from training.gate import GateDecision, apply_decision

        return apply_decision(
            PlatformSettings(), GateDecision(**decision), actor="airflow:train_and_promote"
        ).to_dict()

    @sdk.task
    def reload_serving(decision: dict) -> str:
        from titanovax.settings import PlatformSettings
        from training.registry import notify_serving

        # champion or challenger may have moved: serving re-resolves both aliases
        return notify_serving(PlatformSettings())

    path = dataset()
    done = tune.expand(job=tune_plan(path))
    wd = export(backtest(fit(path, tuned(path, done))))
    reload_serving(promote(gate(register(wd))))


dag = train_and_promote()

if __name__ == "__main__":
    dag.test()
