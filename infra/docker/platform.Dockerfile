# The platform image: the tx CLI, Airflow 3 (CeleryExecutor), MLflow, Feast, training, the
# pusher and the notifier, with the pinned requirements.txt. Build from the repository root:
#   docker build -f infra/docker/platform.Dockerfile -t titanovax/platform .
# No secret is baked in: every credential comes from the env file at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    TX_HOME=/data/tx

RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/titanovax
RUN pip install --no-cache-dir uv==0.13.9
# torch first, the CPU build (an unpinned torch pulls a multi-GB CUDA build)
RUN uv pip install --system --no-cache --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY requirements.txt ./
RUN uv pip install --system --no-cache --index-strategy unsafe-best-match \
      --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY pyproject.toml README.md ./
COPY engine engine
COPY feature_repo feature_repo
COPY training training
COPY serving serving
COPY titanovax titanovax
COPY dags dags
RUN uv pip install --system --no-cache --no-deps . \
 && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow \
 && mkdir -p /data/tx /opt/airflow/logs \
 && chown -R 50000:0 /data/tx /opt/airflow

USER 50000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["tx", "--help"]
