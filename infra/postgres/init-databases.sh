#!/bin/bash
# Runs once, on PostgreSQL's first start: one database per store (TX_POSTGRES_DATABASES).
set -euo pipefail
IFS=',' read -ra dbs <<< "${TX_POSTGRES_DATABASES:-airflow,mlflow,journal}"
for db in "${dbs[@]}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
