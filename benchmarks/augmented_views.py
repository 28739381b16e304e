"""Do K cached augmented views train as well as online augmentation? Prints figures.

Trains the same demo settings with `cache=off` (a fresh augmentation every epoch) and with
`cache.augmented_views` = K for several K, over several seeds, and prints the mean ± std of
val_accuracy and gap for each, with the seconds per run.

    python benchmarks/augmented_views.py
    python benchmarks/augmented_views.py --seeds 5 --views 2,4,8 augment.strength=0.8 model.dropout=0.5

Not a test: it asserts nothing. See benchmarks/README.md for results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--views", default="2,4,8", help="the K values to compare with cache=off")
    parser.add_argument(
        "overrides", nargs="*", default=["augment.strength=0.5", "model.dropout=0.3", "model.unfrozen_blocks=1"]
    )
    args = parser.parse_args()

    from regsweep import train
    from regsweep.config import compose

    store = Path(tempfile.mkdtemp(prefix="regsweep-views-")) / "mlruns"
    variants = {"cache=off": ["cache=off"], **{f"K={k}": [f"cache.augmented_views={k}"] for k in args.views.split(",")}}
    print(f"demo, {' '.join(args.overrides)}, seeds 0-{args.seeds - 1}")
    try:
        train.train_and_log(
            compose([f"paths.store={store}", "train.epochs=1", "tracking.artifacts=none"])
        )  # pretrain the demo backbone
        for name, extra in variants.items():
            val, gap, seconds = [], [], []
            for seed in range(args.seeds):
                cfg = compose(
                    [f"paths.store={store}", "tracking.artifacts=none", f"train.seed={seed}", *args.overrides, *extra]
                )
                start = time.perf_counter()
                metrics = train.train_and_log(cfg).metrics
                seconds.append(time.perf_counter() - start)
                val.append(metrics["val_accuracy"])
                gap.append(metrics["gap"])
            print(
                f"  {name:<10} val_accuracy {statistics.mean(val):.3f} ± {statistics.stdev(val):.3f}   "
                f"gap {statistics.mean(gap):.3f} ± {statistics.stdev(gap):.3f}   "
                f"{statistics.mean(seconds):.1f} s/run",
                flush=True,
            )
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
