#!/bin/sh
# The database roles of the compose stack, made once by the superuser when the timescaledb volume
# is new (the image runs /docker-entrypoint-initdb.d/*.sh). None of them is a superuser:
#   vaktrom        owns the database and its tables; runs the migrations (service `init`)
#   vaktrom_app    what the stages connect as: rows only, no DDL
#   vaktrom_audit  owns the audit log (schema `audit`); no login. The application may only insert
#                  into it and read it (migration 0011). See docs/console-security.md.
# The local stack makes the same roles in infra/services.py (Postgres.after_ready).
set -eu
: "${POSTGRES_OWNER_PASSWORD:?set POSTGRES_PASSWORD in .env}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_password="$POSTGRES_OWNER_PASSWORD" -v app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
CREATE ROLE vaktrom LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE vaktrom_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
CREATE ROLE vaktrom_audit NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
GRANT vaktrom_audit TO vaktrom;
ALTER DATABASE :"DBNAME" OWNER TO vaktrom;
SQL
