-- One schema and one role per service; each role owns its schema and has no grants on the others
-- (DESIGN.md §1). Passwords arrive as psql variables from init.sh, never stored in this file.
\set ON_ERROR_STOP on
SELECT format('CREATE ROLE auth LOGIN PASSWORD %L', :'pw_auth')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'auth') \gexec
SELECT format('CREATE ROLE device LOGIN PASSWORD %L', :'pw_device')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'device') \gexec
SELECT format('CREATE ROLE telemetry LOGIN PASSWORD %L', :'pw_telemetry')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'telemetry') \gexec
SELECT format('CREATE ROLE commands LOGIN PASSWORD %L', :'pw_commands')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'commands') \gexec
SELECT format('CREATE ROLE gateway LOGIN PASSWORD %L', :'pw_gateway')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gateway') \gexec
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION auth;
CREATE SCHEMA IF NOT EXISTS device AUTHORIZATION device;
CREATE SCHEMA IF NOT EXISTS telemetry AUTHORIZATION telemetry;
CREATE SCHEMA IF NOT EXISTS commands AUTHORIZATION commands;
CREATE SCHEMA IF NOT EXISTS gateway AUTHORIZATION gateway;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
-- Each service's migrations start with CREATE SCHEMA IF NOT EXISTS, which Postgres refuses without
-- CREATE on the database even when the schema exists. That grant lets a role make new schemas of its
-- own; it gives no access to another role's schema.
SELECT format('GRANT CREATE ON DATABASE %I TO auth, device, telemetry, commands, gateway', current_database())
\gexec
