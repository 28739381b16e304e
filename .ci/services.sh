# Real services for the tests that need them: PostgreSQL (Optuna storage, MLflow backend) and an
# `mlflow server`, both on 127.0.0.1 only, in throwaway folders. Source it, then:
#   start_services   installs what is missing (apt-get, as root), starts both, exports
#                    REGSWEEP_TEST_POSTGRES_URL, REGSWEEP_TEST_MLFLOW_URL and REGSWEEP_TEST_MLFLOW_DB_URL
#   stop_services    stops both and removes their folders
#   install_browser  Debian's Chromium and its matching chromedriver, for the browser test
# The password is the word "secret" on purpose: a test greps every output for it.

SERVICES_DIR=""
PG_BIN=""

_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_as_postgres() {  # initdb and the server refuse to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_install_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$PG_BIN" ]; then
        echo "services: installing PostgreSQL with apt-get"
        _apt_install postgresql
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
}

_apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_browser() {
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        echo "services: installing Chromium and chromedriver with apt-get"
        _apt_install --no-install-recommends chromium chromium-driver fonts-liberation
    fi
}

start_services() {
    _install_postgres
    SERVICES_DIR=$(mktemp -d /tmp/regsweep-services.XXXXXX)
    chmod 755 "$SERVICES_DIR"
    local pgdata="$SERVICES_DIR/pgdata" pgport mlflow_port
    mkdir -p "$pgdata"
    [ "$(id -u)" = 0 ] && chown postgres "$pgdata"
    pgport=$(_free_port)
    _as_postgres "$PG_BIN/initdb" -D "$pgdata" -U postgres --auth=trust >"$SERVICES_DIR/initdb.log"
    # max_connections is set, not left to initdb, which sizes it from the machine it runs on: whether
    # the suite passes must not depend on that. Each regsweep process holds at most 3 connections
    # (regsweep.study.POOL), the mlflow server at most 2 workers x (2 + 2).
    _as_postgres "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgdata -c max_connections=100" start >/dev/null
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$pgport" -U postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE regsweep LOGIN PASSWORD 'secret'" \
        -c "CREATE DATABASE optuna OWNER regsweep" \
        -c "CREATE DATABASE mlflow OWNER regsweep"
    export REGSWEEP_TEST_POSTGRES_URL="postgresql://regsweep:secret@127.0.0.1:$pgport/optuna"
    export REGSWEEP_TEST_MLFLOW_DB_URL="postgresql://regsweep:secret@127.0.0.1:$pgport/mlflow"

    mlflow_port=$(_free_port)
    mkdir -p "$SERVICES_DIR/artifacts"
    MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=2 MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=2 \
    "$PWD/.venv/bin/mlflow" server --host 127.0.0.1 --port "$mlflow_port" --workers 2 \
        --backend-store-uri "$REGSWEEP_TEST_MLFLOW_DB_URL" \
        --artifacts-destination "$SERVICES_DIR/artifacts" >"$SERVICES_DIR/mlflow.log" 2>&1 &
    echo $! >"$SERVICES_DIR/mlflow.pid"
    export REGSWEEP_TEST_MLFLOW_URL="http://127.0.0.1:$mlflow_port"
    for _ in $(seq 120); do
        if python3 -c "import urllib.request; urllib.request.urlopen('$REGSWEEP_TEST_MLFLOW_URL/health', timeout=2)" 2>/dev/null; then
            echo "services: PostgreSQL on 127.0.0.1:$pgport, mlflow server on $REGSWEEP_TEST_MLFLOW_URL"
            return 0
        fi
        sleep 1
    done
    echo "services: mlflow server did not start; its log:" >&2
    tail -n 30 "$SERVICES_DIR/mlflow.log" >&2
    return 1
}

stop_services() {
    [ -n "$SERVICES_DIR" ] || return 0
    if [ -f "$SERVICES_DIR/mlflow.pid" ]; then
        local pid
        pid=$(cat "$SERVICES_DIR/mlflow.pid")
        pkill -TERM -P "$pid" 2>/dev/null || true  # its gunicorn/uvicorn workers
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ -d "$SERVICES_DIR/pgdata" ]; then
        _as_postgres "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/pgdata" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$SERVICES_DIR"
    SERVICES_DIR=""
}
