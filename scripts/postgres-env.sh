# Sourced by scripts/test.sh: starts a throwaway PostgreSQL cluster on a
# loopback port, in $JWKE_TMP/pg (initdb/pg_ctl, as the postgres user when
# run as root), and exports JWKE_TEST_POSTGRES_DSN. postgres_stop stops it.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PG_DIR="$JWKE_TMP/pg"
PG_PORT=$(( 20000 + $$ % 20000 ))
PG_PASSWORD=$(openssl rand -hex 12)
mkdir -p "$PG_DIR"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" -eq 0 ] && chown postgres "$PG_DIR" && chmod 755 "$JWKE_TMP"
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off" start >/dev/null
as_pg "$PG_BIN/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE jwke LOGIN PASSWORD '$PG_PASSWORD'" -c "CREATE DATABASE jwkengine OWNER jwke" >/dev/null
export JWKE_TEST_POSTGRES_DSN="postgres://jwke:$PG_PASSWORD@127.0.0.1:$PG_PORT/jwkengine?sslmode=disable"
export JWKE_TEST_POSTGRES_ADMIN="$PG_BIN/psql -h $PG_DIR -p $PG_PORT -U postgres jwkengine"
postgres_stop() {
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
}
