"""Airflow DAG files: wiring only."""
