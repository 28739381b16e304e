"""How the search settings (objective, pruner) change a study's answer, on real photos.

Two steps, so the studies themselves are ordinary `regsweep sweep` runs a user could make:

    python benchmarks/search_settings.py split --per-class 5 --out /tmp/signs5
    regsweep sweep model=mobilenet_v2 model.weights=<weights> data=folders data.train_dir=/tmp/signs5/train \\
        data.val_dir=/tmp/signs5/validation data.test_dir=/tmp/signs5/test data.flip=none \\
        paths.store=/tmp/signs-store sweep.study=<name> [sweep.pruner.name=… sweep.objective=…]
    python benchmarks/search_settings.py summary --store /tmp/signs-store <name> <name> …

`split` makes a few-shot split of ../shared/data/sign-digits (real camera photos, five classes):
K training and 100 validation images per class, the rest for the test split, seeded. `summary`
prints, per study: its settings, the sweep's wall time (first trial start to last trial end),
the pruned share with and without augmentation, and the answer with its re-evaluated test
accuracy against the baseline's.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

SIGN_DIGITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sign-digits"


def make_split(per_class: int, out: Path, validation: int = 100, seed: int = 0) -> None:
    if not SIGN_DIGITS.is_dir():
        sys.exit(f"skipped: {SIGN_DIGITS} is absent (the team's shared data is not beside this checkout)")
    for class_dir in sorted(p for p in SIGN_DIGITS.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        random.Random(seed).shuffle(files)
        parts = {
            "train": files[:per_class],
            "validation": files[per_class : per_class + validation],
            "test": files[per_class + validation :],
        }
        for split, chosen in parts.items():
            target = out / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in chosen:
                link = target / path.name
                if not link.exists():
                    os.symlink(path, link)
    print(
        f"{out}: " + ", ".join(f"{s} {sum(1 for _ in (out / s).rglob('*.*'))}" for s in ("train", "validation", "test"))
    )


def summarize(store: Path, names: list[str]) -> None:
    from regsweep import reevaluate, results, study
    from regsweep.config import compose_study

    print(
        "| study | objective | sweep wall s | complete | pruned | pruned, augmented | pruned, not augmented "
        "| answer | its test accuracy | baseline's test accuracy |"
    )
    print("|" + "---|" * 10)
    for name in names:
        cfg = compose_study([f"paths.store={store}", f"sweep.study={name}"])
        stored = study.load_study(cfg.sweep, cfg.tracking.connect_timeout)
        trials = stored.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        wall = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
        augmented = [t for t in finished if t.params.get("augment.strength", 0) > 0]
        plain = [t for t in finished if t.params.get("augment.strength", 0) == 0]

        def share(group):
            return f"{sum(t.state.name == 'PRUNED' for t in group)} of {len(group)}"

        rows = study.trial_rows(stored)
        settings = study.study_settings(stored, cfg)
        parent = stored.user_attrs.get(study.PARENT_RUN_ATTR)
        state = reevaluate.Reevaluation(stored, cfg, settings, parent, [f"paths.store={store}"]).look().rounds
        answer = results.answer(rows, state, settings.epsilon)
        baseline = answer.baseline if answer else None
        adopted = (baseline if answer.keep_baseline else answer.chosen) if answer and answer.verdict else None
        pruned = sum(t.state.name == "PRUNED" for t in finished)
        print(
            f"| {name} | {settings.objective} | {wall:.0f} | {len(finished) - pruned} | {pruned} | "
            f"{share(augmented)} | {share(plain)} | {answer.label if answer else '—'} | "
            f"{adopted.pm('test_accuracy', 3) if adopted else '—'} | "
            f"{baseline.pm('test_accuracy', 3) if baseline else '—'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="a few-shot split of ../shared/data/sign-digits")
    split.add_argument("--per-class", type=int, default=5)
    split.add_argument("--out", type=Path, required=True)
    summary = commands.add_parser("summary", help="one table row per stored study")
    summary.add_argument("--store", type=Path, required=True)
    summary.add_argument("studies", nargs="+")
    args = parser.parse_args()
    if args.command == "split":
        make_split(args.per_class, args.out)
    else:
        summarize(args.store, args.studies)


if __name__ == "__main__":
    main()
