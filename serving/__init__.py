"""Serving room: the BentoML service for the ``champion`` ONNX bundle and its import from MLflow.

Modules:

- ``settings``: ``ServingSettings``, the ``TX_*`` environment of the serving deployable.
- ``preprocess``: plain functions that turn request rows into the model's float32 matrix,
  validate them and map probabilities to decisions (no BentoML import).
- ``schemas``: the typed JSON request and response models of the HTTP API.
- ``inference``: the onnxruntime session tuned for single-row latency.
- ``importer``: MLflow registry alias → BentoML model store.
- ``service``: the ``@bentoml.service`` class ``TrendService``.
- ``server``: start, wait for and stop a ``bentoml serve`` process.

Importing this package imports nothing heavy and has no side effects.
"""
