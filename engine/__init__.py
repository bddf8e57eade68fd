"""TitanovaX lean live engine.

Deployed apart from the platform (next to the MT5 terminal), so this package imports nothing
from the other rooms and none of feast, mlflow, torch, airflow or bentoml.
"""
