# The serving image, from serving/bentofile.yaml: the bento's python packages (read from the
# bentofile at build time, so the two never drift), its `include` (serving/*.py), plus what
# `tx serve` needs to import the `champion` alias from MLflow at start-up (mlflow-skinny, the
# tx CLI). Build from the repository root:
#   docker build -f infra/docker/serving.Dockerfile -t titanovax/serving .
# To ship a bento with a model packed in instead: `bentoml build -f serving/bentofile.yaml .`
# then `bentoml containerize` (see docs/deploy.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_HOME=/data/bentoml \
    TX_HOME=/data/tx

WORKDIR /opt/titanovax
RUN pip install --no-cache-dir pyyaml==6.0.4
COPY serving/bentofile.yaml serving/bentofile.yaml
RUN python -c "import yaml; print('\n'.join(yaml.safe_load(open('serving/bentofile.yaml'))['python']['packages']))" > /tmp/bento-requirements.txt \
 && pip install --no-cache-dir -r /tmp/bento-requirements.txt \
      "mlflow-skinny==3.17.2" "typer>=0.12" "psycopg[binary]==3.3.9"
COPY pyproject.toml README.md ./
COPY serving serving
COPY titanovax titanovax
COPY engine engine
RUN pip install --no-cache-dir --no-deps . \
 && useradd --uid 50001 --create-home bento \
 && mkdir -p /data/bentoml /data/tx && chown -R 50001 /data

USER 50001
EXPOSE 3000
CMD ["tx", "serve", "--host", "0.0.0.0", "--port", "3000"]
