"""train_and_promote, weekly: dataset → tune (mapped) → fit → backtest → export → register →
gate → promote → reload serving.

The data interval's end is the "as of" time: the dataset holds only bars whose labels were
known by then. XCom carries references only: the dataset path, the study name, the training
work dir, the model version and the gate decision. Each task calls one function of
:mod:`training`; the tune workers share the Optuna studies (``TX_OPTUNA_STORAGE``; one per
member: XGBoost, and the transformer for an ensemble config) and pass straight through when
the config disables tuning (trend_v1, the demo's fast path); ``fit`` trains with both members'
best parameters.
"""

from __future__ import annotations

from datetime import datetime

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable


def _cfg(params: dict | None):  # type: ignore[no-untyped-def]
    from training.config import load_config

    return load_config((params or {})["experiment"])


@sdk.dag(
    dag_id="train_and_promote",
    schedule=CronDataIntervalTimetable("0 0 * * 6", timezone="UTC"),  # Saturdays, markets closed
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["training"],
    params={"experiment": "trend_v1"},
    default_args={"retries": 0},
)
def train_and_promote() -> None:
    @sdk.task
    def dataset(params: dict | None = None, data_interval_end: datetime | None = None) -> str:
        from titanovax.settings import PlatformSettings
        from training.train import build_training_dataset

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
        from titanovax.settings import PlatformSettings
        from training.tune import run_planned_worker

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
        from titanovax.settings import PlatformSettings
        from training.train import fit_step

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
