"""A cached frozen study on a large image folder: peak memory, and what the first trial waits for.

It generates (once) a folder of drawn-shape PNGs, 5 classes, 128 px, split 80/20 into train and
validation, then runs a real `regsweep sweep` on it: MobileNetV2 with the shared ImageNet
weights, `model.unfrozen_blocks=0` (the default space's other three knobs stay), the cache on,
a few trials: the first fills the clean train and validation views, and each new strength level
K augmented views of the training images (a backbone pass over them each). It samples the
resident memory of the sweep's whole process tree every 0.2 s and reads the steps' own progress
lines (REGSWEEP_PROGRESS_SECONDS=5) for how long the image check, the decoding and the cache
fills took (the fingerprints print a line only when they take more than 5 s).

    python benchmarks/large_folder.py                          # 20,000 images, 4 trials, ~20 min on 2 cores
    python benchmarks/large_folder.py --images 2000 --trials 2  # a quick look

Not a test: it asserts nothing and prints figures. See benchmarks/README.md for results.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_speed import SHARED_WEIGHTS, generated_images, run_sweep

DONE = re.compile(r"^(?P<what>.+?): (?P<n>[\d,]+) / (?P=n) \w+, done in (?P<time>[\d:]+)$")


def run(store: Path, data: Path, trials: int) -> dict:
    """One sweep (cache_speed's run_sweep): wall seconds, peak RSS (MiB) and output lines."""
    os.environ["REGSWEEP_PROGRESS_SECONDS"] = "5"  # the steps' lines, with their times, in the log
    overrides = [
        "model=mobilenet_v2",
        f"model.weights={SHARED_WEIGHTS}",
        "model.image_size=128",
        "model.unfrozen_blocks=0",
        "data=folders",
        f"data.train_dir={data / 'train'}",
        f"data.val_dir={data / 'val'}",
        f"sweep.n_trials={trials}",
    ]
    return run_sweep(store, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="images in all (80 %% train, 20 %% validation)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "regsweep-large-folder")
    args = parser.parse_args()
    if not SHARED_WEIGHTS.is_file():
        sys.exit(f"skipped: {SHARED_WEIGHTS} is absent (the team's shared weights are not beside this checkout)")
    per_class = args.images // 5
    data = args.work / f"shapes-{args.images}"
    if not data.is_dir():
        started = time.perf_counter()
        generated_images(data, per_class * 4 // 5, per_class // 5, size=128)
        print(f"generated {args.images} images in {time.perf_counter() - started:.0f} s: {data}", flush=True)
    store = args.work / f"store-{time.strftime('%Y%m%d-%H%M%S')}" / "mlruns"
    store.mkdir(parents=True)
    result = run(store, data, args.trials)
    wall, peak, lines = result["wall"], result["peak"], [line.rstrip("\n") for line in result["log"]]
    print(f"{os.cpu_count()} cores; {args.images} images at 128 px; {args.trials} frozen trials with the cache")
    for line in lines:
        match = DONE.match(line)
        if match:
            print(f"  {match['what']}: {match['n']} in {match['time']}")
    print(f"wall {wall:.0f} s; peak RSS of the sweep's process tree {peak:.0f} MiB ({peak / 1024:.2f} GiB)")
    for line in lines:
        if line.startswith("trial "):
            print("  " + line)


if __name__ == "__main__":
    main()
