"""train_and_promote: dataset → train, export and register → promote (gate), weekly.

The data interval's end is the "as of" time: the dataset holds only bars whose labels were
known by then. XCom carries the dataset path, the model version and the gate decision.
"""

from __future__ import annotations

from datetime import datetime

from airflow import sdk
from airflow.timetables.interval import CronDataIntervalTimetable


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
        from infra.settings import PlatformSettings
        from training.config import load_config
        from training.train import build_training_dataset

        return build_training_dataset(PlatformSettings(), load_config(params["experiment"]), data_interval_end)  # type: ignore[arg-type,index]

    @sdk.task
    def train(path: str, params: dict | None = None, data_interval_end: datetime | None = None) -> dict:
        from infra.settings import PlatformSettings
        from training.config import load_config
        from training.train import train_and_register

        return train_and_register(PlatformSettings(), load_config(params["experiment"]), path, data_interval_end).to_dict()  # type: ignore[arg-type,index]

    @sdk.task
    def promote(trained: dict) -> dict:
        from infra.settings import PlatformSettings
        from training.train import promote as gate

        return gate(PlatformSettings(), trained["version"]).to_dict()

    promote(train(dataset()))


dag = train_and_promote()

if __name__ == "__main__":
    dag.test()
