"""Feature cache vs `cache=off`, side by side in one run on this machine; prints figures.

Each case runs real `regsweep sweep` processes on fresh stores with the same sampler seed,
once with the cache and once with `cache=off`, and compares wall time, trials/hour, seconds
per trained epoch and the best val_accuracy (quality parity). It also reports the peak RSS
of one long sweep after 5 and after 50 trials, and the harness's share of trial time
(Hydra composition, Optuna and MLflow: a trial's wall time minus the run's own setup,
feature, fit and evaluation seconds, with the logging/pruning callbacks counted as harness).

    python benchmarks/cache_speed.py                    # every case, about 40 min on 2 cores
    python benchmarks/cache_speed.py --cases c --trials 12 --images 120

Not a test: it asserts nothing and prints a table. See benchmarks/README.md for results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_quant_notop.weights.h5"
REGSWEEP = [str(Path(sys.executable).with_name("regsweep"))]  # the one installed beside this Python


def run_sweep(store: Path, overrides: list[str], watch_trials: tuple[int, ...] = ()) -> dict:
    """One `regsweep sweep` process: wall seconds, the peak RSS (MiB) of its process tree (the
    sweep and its trial worker, summed, sampled every 0.2 s) up to the end of trial k and over
    the whole run, and its output lines."""
    import threading

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    # Re-evaluation (after the trials) is the same work in both modes: left out of the comparison.
    command = [*REGSWEEP, "sweep", f"paths.store={store}", "sweep.reevaluate.seeds=0", *overrides]
    process = subprocess.Popen(
        command, cwd=store.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    peak = [0.0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mib(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    finished, peaks, log = 0, {}, []
    for line in process.stdout:
        log.append(line)
        if line.startswith("trial ") and (" COMPLETE " in line or " PRUNED " in line or " FAIL " in line):
            finished += 1
            if finished in watch_trials:
                peaks[finished] = max(peak[0], _tree_rss_mib(process.pid))
    process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.stdout.write("".join(log[-30:]))
        raise SystemExit(f"regsweep sweep {' '.join(overrides)} failed with exit code {process.returncode}")
    return {"wall": wall, "peaks": peaks, "peak": max(peak[0], *peaks.values(), 0.0), "log": log}


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 once it has gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def study_figures(store: Path, study: str = "regularization") -> dict:
    """Trial counts, best val_accuracy, epochs and per-trial harness overhead, from the stores."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{store}/optuna.db").get_trials(deepcopy=False)
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    epochs, shares, hits, misses = 0, [], 0, 0
    stages = {name: [] for name in ("wall", "setup", "features", "fit", "evaluate", "harness")}
    for trial in counted:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        m = run.data.metrics
        history = client.get_metric_history(run.info.run_id, "epoch_loss")
        epochs += len(history)
        hits, misses = hits + m.get("cache_hits", 0), misses + m.get("cache_misses", 0)
        if trial.state.name == "COMPLETE":
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            compute = (
                m["seconds_setup"]
                + m["seconds_features"]
                + m["seconds_fit"]
                - m["seconds_callbacks"]
                + m["seconds_evaluate"]
            )
            shares.append(max(wall - compute, 0.0) / wall)
            for name in ("setup", "features", "evaluate"):
                stages[name].append(m[f"seconds_{name}"])
            stages["fit"].append(m["seconds_fit"] - m["seconds_callbacks"])
            stages["wall"].append(wall)
            stages["harness"].append(max(wall - compute, 0.0))
    complete = [t for t in counted if t.state.name == "COMPLETE"]
    return {
        "trials": len(counted),
        "complete": len(complete),
        "epochs": epochs,
        "best_val": max((t.user_attrs["val_accuracy"] for t in complete), default=math.nan),
        "overhead_share": statistics.mean(shares) if shares else math.nan,
        "overhead_of_time": sum(stages["harness"]) / sum(stages["wall"]) if shares else math.nan,
        "cache_hits": int(hits),
        "cache_misses": int(misses),
        "mean_trial_s": {name: round(statistics.mean(v), 2) if v else math.nan for name, v in stages.items()},
    }


def compare(name: str, work: Path, overrides: list[str], demo: Path | None) -> dict:
    rows = {}
    for mode, extra in (("cache", []), ("cache=off", ["cache=off"])):
        store = work / f"{name}-{mode.replace('=', '-')}" / "mlruns"
        store.mkdir(parents=True)
        if demo is not None:
            (store / "demo").symlink_to(demo)
        result = run_sweep(store, overrides + extra)
        rows[mode] = {**result, **study_figures(store)}
        print(
            f"  {name:<24} {mode:<10} {rows[mode]['wall']:7.1f} s  {rows[mode]['trials']} trials "
            f"({rows[mode]['complete']} complete)  {rows[mode]['epochs']} epochs  "
            f"best val {rows[mode]['best_val']:.4f}",
            flush=True,
        )
        print(f"    mean complete trial (s): {json.dumps(rows[mode]['mean_trial_s'])}", flush=True)
    on, off = rows["cache"], rows["cache=off"]
    summary = {
        "case": name,
        "overrides": " ".join(overrides),
        "wall_cache_s": round(on["wall"], 1),
        "wall_off_s": round(off["wall"], 1),
        "trials_per_hour_cache": round(on["trials"] * 3600 / on["wall"], 1),
        "trials_per_hour_off": round(off["trials"] * 3600 / off["wall"], 1),
        "speedup_wall": round(off["wall"] / on["wall"], 2),
        "speedup_per_epoch": round((off["wall"] / off["epochs"]) / (on["wall"] / on["epochs"]), 2),
        "best_val_cache": round(on["best_val"], 4),
        "best_val_off": round(off["best_val"], 4),
        "harness_share_cache": round(on["overhead_share"], 3),
        "harness_share_off": round(off["overhead_share"], 3),
        "harness_of_trial_time_cache": round(on["overhead_of_time"], 3),
        "harness_of_trial_time_off": round(off["overhead_of_time"], 3),
        "cache_hits_misses": f"{on['cache_hits']}/{on['cache_misses']}",
    }
    print("  " + json.dumps(summary), flush=True)
    return summary


SHAPES = ("ellipse", "rectangle", "triangle", "cross", "stripes")


def generated_images(root: Path, per_class_train: int, per_class_val: int, size: int = 128, seed: int = 0) -> Path:
    """Five classes of drawn shapes, small and faint on noise, each image with a fainter
    distractor shape of another class: learnable, but not at a glance (PNG class folders)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for label in SHAPES:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                image = Image.fromarray(rng.integers(0, 140, (size, size, 3), dtype=np.uint8))
                draw = ImageDraw.Draw(image)
                distractor = SHAPES[(SHAPES.index(label) + int(rng.integers(1, len(SHAPES)))) % len(SHAPES)]
                _draw(draw, distractor, rng, size, brightness=(100, 170), scale=0.7)
                _draw(draw, label, rng, size, brightness=(130, 230), scale=1.0)
                image.save(folder / f"{label}_{i:04d}.png")
    return root


def _draw(draw, shape: str, rng, size: int, brightness: tuple[int, int], scale: float) -> None:
    colour = tuple(int(v) for v in rng.integers(*brightness, 3))
    extent = int(rng.integers(size // 6, size // 3) * scale)
    x, y = (int(v) for v in rng.integers(0, size - extent, 2))
    box = [x, y, x + extent, y + extent]
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y + extent), (x + extent // 2, y), (x + extent, y + extent)], fill=colour)
    elif shape == "cross":
        draw.line([x, y, x + extent, y + extent], fill=colour, width=4)
        draw.line([x, y + extent, x + extent, y], fill=colour, width=4)
    else:
        for row in range(y, y + extent, 6):
            draw.line([x, row, x + extent, row], fill=colour, width=2)


def prepare_demo(work: Path) -> Path:
    """Pretrains the demo backbone once, outside the timed sweeps (a `regsweep train` with 1 epoch)."""
    store = work / "demo-store" / "mlruns"
    store.mkdir(parents=True)
    subprocess.run(
        [*REGSWEEP, "train", f"paths.store={store}", "train.epochs=1", "tracking.artifacts=none"],
        cwd=store.parent,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return store / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        default="a,b,c,d",
        help="a: demo, b: demo frozen, c: mobilenet_v2 (both studies), cf: only its frozen study, d: RSS",
    )
    parser.add_argument("--trials", type=int, default=24, help="sweep.n_trials for cases a, b and c")
    parser.add_argument(
        "--images", type=int, default=60, help="case c: training images per class (half as many for validation)"
    )
    parser.add_argument("--size", type=int, default=96, help="case c: model.image_size")
    parser.add_argument("--rss-trials", type=int, default=50, help="case d: trials of the long sweep")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    cases = set(args.cases.split(","))

    import tensorflow as tf

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}"
    )
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="regsweep-bench-"))
    results = []
    try:
        demo = prepare_demo(work) if cases & {"a", "b", "d"} else None
        budget = [f"sweep.n_trials={args.trials}"]
        if "a" in cases:
            results.append(compare("a demo default", work, budget, demo))
        if "b" in cases:
            results.append(compare("b demo frozen", work, [*budget, "model.unfrozen_blocks=0"], demo))
        if cases & {"c", "cf"}:
            images = generated_images(work / "images", args.images, max(args.images // 2, 2))
            weights = str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "null"
            print(f"  mobilenet_v2 weights: {weights if weights != 'null' else 'null (shared ImageNet file absent)'}")
            common = [
                *budget,
                "model=mobilenet_v2",
                f"model.weights={weights}",
                f"model.image_size={args.size}",
                "data=folders",
                f"data.train_dir={images}/train",
                f"data.val_dir={images}/val",
                "data.batch_size=32",
            ]
            if "c" in cases:
                results.append(compare("c mobilenet_v2 default", work, common, None))
            results.append(compare("c mobilenet_v2 frozen", work, [*common, "model.unfrozen_blocks=0"], None))
        if "d" in cases:
            store = work / "rss" / "mlruns"
            store.mkdir(parents=True)
            (store / "demo").symlink_to(demo)
            n = args.rss_trials
            result = run_sweep(store, [f"sweep.n_trials={n}", "sweep.study=rss"], watch_trials=(5, n))
            peaks = result["peaks"]
            summary = {
                "case": f"d peak RSS, demo sweep of {n} trials",
                "rss_after_5_mib": round(peaks[5]),
                f"rss_after_{n}_mib": round(peaks[n]),
                "ratio": round(peaks[n] / peaks[5], 3),
                "wall_s": round(result["wall"], 1),
            }
            print("  " + json.dumps(summary), flush=True)
            results.append(summary)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\nresults:")
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
