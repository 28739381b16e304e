"""Two `regsweep sweep` processes on one study with the embedded SQLite stores: does anything
break, and does it pay on this machine? Prints figures; not a test.

Each repetition starts a fresh store and runs, side by side in one run of this script:
  - one sweep alone with the study's budget (the reference wall time);
  - two sweeps started together on one new study with the same budget;
and checks the outcome: return codes, "database is locked" in any output, trials by state,
duplicate MLflow runs, baselines and parent runs.

    python benchmarks/concurrent_workers.py --repeats 5 --trials 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGSWEEP = str(Path(sys.executable).with_name("regsweep"))
TINY = [
    "train.epochs=6",
    "train.fine_tune_epochs=2",
    "tracking.artifacts=none",
    "sweep.heartbeat_seconds=2",
    "sweep.reevaluate.seeds=0",
]


def sweeps(store: Path, trials: int, workers: int) -> dict:
    command = [REGSWEEP, "sweep", f"paths.store={store}", f"sweep.n_trials={trials}", *TINY]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(workers)
    ]
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - start
    return {"wall": wall, "codes": [p.returncode for p in processes], "outputs": outputs, **outcome(store)}


def outcome(store: Path) -> dict:
    import mlflow
    import optuna

    study = optuna.load_study(study_name="regularization", storage=f"sqlite:///{store}/optuna.db")
    states = [t.state.name for t in study.trials]
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("regsweep").experiment_id])
    run_ids = [t.user_attrs.get("mlflow_run_id") for t in study.trials]
    return {
        "counted": sum(s in ("COMPLETE", "PRUNED") for s in states),
        "failed": states.count("FAIL"),
        "baselines": sum(bool(t.user_attrs.get("baseline")) for t in study.trials),
        "parents": sum(r.data.tags.get("regsweep.role") == "study" for r in runs),
        "children": sum("mlflow.parentRunId" in r.data.tags for r in runs),
        "duplicate_runs": len(run_ids) - len(set(run_ids)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; {args.repeats} repeats of a {args.trials}-trial demo study")
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            alone = sweeps(Path(folder) / "alone" / "mlruns", args.trials, 1)
            pair = sweeps(Path(folder) / "pair" / "mlruns", args.trials, 2)
        locked = sum("database is locked" in text for text in pair["outputs"] + alone["outputs"])
        row = {
            "repeat": repeat,
            "alone_s": round(alone["wall"], 1),
            "pair_s": round(pair["wall"], 1),
            "speedup": round(alone["wall"] / pair["wall"], 2),
            "pair_codes": pair["codes"],
            "locked": locked,
            **{k: pair[k] for k in ("counted", "failed", "baselines", "parents", "children", "duplicate_runs")},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if any(pair["codes"]):
            print("".join(text[-2000:] for text in pair["outputs"]))
    ok = all(
        not any(r["pair_codes"])
        and not r["locked"]
        and r["failed"] == 0
        and r["baselines"] == 1
        and r["parents"] == 1
        and r["duplicate_runs"] == 0
        and r["children"] == r["counted"]
        for r in rows
    )
    mean = sum(r["speedup"] for r in rows) / len(rows)
    print(f"all clean: {ok}; two workers vs one, wall-time ratio: mean {mean:.2f}x")


if __name__ == "__main__":
    main()
