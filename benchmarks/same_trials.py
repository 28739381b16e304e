"""Whether two stores hold the same seeded study trial by trial: the check behind "a speed-up
changed no result".

Run the same `regsweep sweep` command (same sampler seed, same data) on two fresh stores, one
with the code before a change and one after, then:

    python benchmarks/same_trials.py <store before> <store after> [--study regularization]

Per trial it compares the state, the sampled values, val_accuracy, train_accuracy, the epochs
trained, the whole per-epoch `epoch_val_loss` curve and the pruner's intermediate values, all at
full precision, and prints each trial's stage seconds side by side (means after the first trial,
which holds the worker's start-up). Not a test: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

STAGES = ("setup", "features", "fit", "callbacks", "evaluate")


def trials(store: Path, study: str) -> list[dict]:
    """Each trial's results and stage seconds, from the Optuna and MLflow stores."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    rows = []
    for trial in optuna.load_study(study_name=study, storage=f"sqlite:///{store}/optuna.db").get_trials():
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        metrics = run.data.metrics
        curve = sorted(client.get_metric_history(run.info.run_id, "epoch_val_loss"), key=lambda m: m.step)
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "params": trial.params,
            "results": {k: metrics.get(k) for k in ("val_accuracy", "train_accuracy", "epochs_trained")},
            "curve": [m.value for m in curve],
            "intermediate": dict(sorted(trial.intermediate_values.items())),
        }
        if trial.state.name == "COMPLETE":
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            seconds = {stage: metrics.get(f"seconds_{stage}", 0.0) for stage in STAGES}
            seconds["fit"] -= seconds["callbacks"]  # fit without the logging and pruning callbacks
            # as benchmarks/cache_speed.py counts it: the callbacks are harness too
            seconds["harness"] = wall - sum(v for k, v in seconds.items() if k != "callbacks")
            row["seconds"] = {"wall": wall, **seconds}
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--study", default="regularization")
    args = parser.parse_args()
    before, after = trials(args.before, args.study), trials(args.after, args.study)
    same = 0
    for old, new in zip(before, after):
        keys = ("state", "params", "results", "curve", "intermediate")
        differ = [key for key in keys if old[key] != new[key]]
        same += not differ
        print(f"trial #{old['number']}: " + ("identical" if not differ else f"differs in {', '.join(differ)}"))
    print(f"{same} of {min(len(before), len(after))} trials identical ({len(before)} before, {len(after)} after)")
    for name, rows in (("before", before), ("after", after)):
        timed = [row["seconds"] for row in rows[1:] if "seconds" in row]
        if timed:
            means = {key: round(statistics.mean(s[key] for s in timed), 3) for key in timed[0]}
            print(f"{name}: mean seconds of trials after the first: {means}")


if __name__ == "__main__":
    main()
