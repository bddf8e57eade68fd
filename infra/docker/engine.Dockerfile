# The lean engine image: engine/ and engine/requirements.txt only (no Airflow, MLflow, Feast,
# pandas or torch). Build from the repository root:
#   docker build -f infra/docker/engine.Dockerfile -t titanovax/engine .
# It runs `python -m engine` (live: TX_MT5_MODE=bridge to an mt5linux host, or native on
# Windows); tokens and the MT5 password come from the environment at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/engine
COPY engine/requirements.txt engine/requirements.txt
RUN pip install --no-cache-dir -r engine/requirements.txt
COPY engine engine
RUN useradd --uid 50002 --create-home engine && mkdir -p /opt/engine/.tx && chown -R 50002 /opt/engine/.tx

USER 50002
EXPOSE 8765
CMD ["python", "-m", "engine"]
