"""Peak PostgreSQL connections while a command runs, per database, read from pg_stat_activity.

Many sweep workers share one PostgreSQL (the Optuna study) and one mlflow server (its own
database), and the server refuses connections beyond max_connections. This samples every
50 ms how many connections each database has open, other than this script's own, and prints
the peak per database when the command ends.

usage: python benchmarks/postgres_connections.py POSTGRES_URL -- COMMAND [ARGS...]
e.g.   python benchmarks/postgres_connections.py "$REGSWEEP_TEST_POSTGRES_URL" -- \
           regsweep sweep sweep.storage="$REGSWEEP_TEST_POSTGRES_URL" sweep.n_trials=4
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psycopg


def watch(url: str, peaks: dict[str, int], stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True, application_name="postgres_connections.py") as connection:
        while not stop.is_set():
            rows = connection.execute(
                "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() GROUP BY datname"
            ).fetchall()
            for database, count in rows:
                peaks[database] = max(peaks.get(database, 0), count)
            time.sleep(0.05)


def main() -> int:
    url, separator, *command = sys.argv[1:]
    assert separator == "--" and command, __doc__
    peaks: dict[str, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(url, peaks, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    code = subprocess.call(command)
    stop.set()
    watcher.join()
    print(
        f"command exited {code} after {time.monotonic() - started:.0f} s; peak connections per database: "
        + ", ".join(f"{database} {count}" for database, count in sorted(peaks.items())),
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
