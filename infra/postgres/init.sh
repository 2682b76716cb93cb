#!/bin/sh
# Runs once when the Postgres volume is created; hands each service's password to init.sql.
set -eu
exec psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v pw_auth="$AUTH_DB_PASSWORD" -v pw_device="$DEVICE_DB_PASSWORD" \
  -v pw_telemetry="$TELEMETRY_DB_PASSWORD" -v pw_commands="$COMMANDS_DB_PASSWORD" \
  -v pw_gateway="$GATEWAY_DB_PASSWORD" -f /fleet-init/init.sql
