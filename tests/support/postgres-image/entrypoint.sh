#!/usr/bin/env bash
# The official postgres image's entrypoint contract, in short: on an empty PGDATA,
# initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, password
# (scram-sha-256) logins over TCP from anywhere, trust on the local socket, and
# POSTGRES_DB created when it is not `postgres`; then the server on port 5432.
set -Eeuo pipefail

if [[ "${1:-postgres}" != postgres ]]; then
  exec "$@"
fi
shift || true

: "${PGDATA:?PGDATA must be set}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-${user}}"

mkdir -p "${PGDATA}"
chmod 0700 "${PGDATA}"
if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required to initialise a database}"
  pwfile="$(mktemp)"
  printf '%s\n' "${POSTGRES_PASSWORD}" >"${pwfile}"
  initdb --username="${user}" --pwfile="${pwfile}" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --pgdata="${PGDATA}" >/dev/null
  rm -f "${pwfile}"
  printf 'host all all all scram-sha-256\n' >>"${PGDATA}/pg_hba.conf"
  if [[ "${database}" != postgres ]]; then
    printf 'CREATE DATABASE "%s";\n' "${database//\"/\"\"}" \
      | postgres --single -D "${PGDATA}" -j postgres >/dev/null
  fi
  echo "docker-entrypoint.sh: initialised ${PGDATA}"
fi

exec postgres -c listen_addresses='*' -c port=5432 "$@"
