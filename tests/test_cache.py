"""The frozen-prefix feature cache: keys, exact reuse, damage, concurrent fills, eviction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK, write_class_folders
from regsweep import cache, data, fit
from regsweep import model as models
from regsweep.config import compose


def folders_cfg(store: Path, root: Path, *overrides: str):
    return compose(
        [
            f"paths.store={store}",
            "data=folders",
            f"data.train_dir={root}/train",
            f"data.val_dir={root}/val",
            "model.weights=null",
            "data.batch_size=4",
            *QUICK,
            *overrides,
        ]
    )


@pytest.fixture
def images(tmp_path) -> Path:
    write_class_folders(tmp_path / "images" / "train", 4, classes=("a", "b"))
    write_class_folders(tmp_path / "images" / "val", 2, classes=("a", "b"), seed=1)
    return tmp_path / "images"


def prepare(cfg):
    """What one run asks of the cache: (entry name → hit) and the run's cached data."""
    import keras

    splits = data.resolve_splits(cfg.data, cfg.model.image_size, Path(cfg.paths.store))
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    weights = None if cfg.model.weights is None else str(cfg.model.weights)
    base = models.load_backbone(cfg.model.backbone, cfg.model.image_size, weights)
    classifier = models.build_classifier(
        cfg.model.backbone, base, len(splits.class_names), cfg.model.pooling, 8, 0.0, 0
    )
    return fit.cached(cfg, splits, base, classifier)


def counts(trainer) -> tuple[int, int]:
    """(hits, misses) of the entries a run asked for."""
    return trainer.cache_metrics["cache_hits"], trainer.cache_metrics["cache_misses"]


def entry_names(store: Path) -> set[str]:
    return {row["path"].name for row in cache.store_for(compose([f"paths.store={store}"])).listing()}


def test_every_input_of_the_numbers_is_in_the_key(tmp_path, images):
    store = tmp_path / "mlruns"
    first = prepare(folders_cfg(store, images, "augment.strength=0.5", "cache.augmented_views=2"))
    assert counts(first) == (0, 4)  # clean train, clean validation, 2 views
    known = entry_names(store)
    again = prepare(folders_cfg(store, images, "augment.strength=0.5", "cache.augmented_views=2"))
    assert counts(again) == (4, 0) and entry_names(store) == known

    changes = {  # override → entries that must be new
        "augment.strength=0.6": 2,  # the two views
        "augment.max_rotation=0.2": 2,
        "data.flip=vertical": 2,
        "train.seed=1": 4,  # seeded random backbone weights differ, so every entry does
        "model.unfrozen_blocks=1": 4,  # another cut (phase 1 still reads the backbone's top)
        "model.pooling=avg": 4,  # phase 1 caches pooled vectors
        "model.image_size=36": 4,
        "cache.augmented_views=3": 1,  # views 0 and 1 are reused
    }
    for override, new in changes.items():
        before = entry_names(store)
        prepare(folders_cfg(store, images, "augment.strength=0.5", "cache.augmented_views=2", override))
        assert len(entry_names(store) - before) == new, override

    # Other weights: save the seeded random backbone, then perturb one value.
    import keras

    keras.utils.set_random_seed(0)
    base = models.load_backbone("demo_cnn", 32, None)
    weights_file = tmp_path / "backbone.weights.h5"
    base.save_weights(weights_file)
    before = entry_names(store)
    prepare(folders_cfg(store, images, f"model.weights={weights_file}"))
    assert len(entry_names(store) - before) == 0  # same values as the seeded init: same numbers
    base.layers[1].kernel.assign(base.layers[1].kernel + 1e-3)
    base.save_weights(weights_file)
    prepare(folders_cfg(store, images, f"model.weights={weights_file}"))
    assert len(entry_names(store) - before) == 2

    # Data: editing one training image's bytes misses the train entries only; touching it does not.
    image = images / "train" / "a" / "a_000.png"
    before = entry_names(store)
    os.utime(image, (time.time() + 5, time.time() + 5))
    assert counts(prepare(folders_cfg(store, images)))[1] == 0
    write_class_folders(tmp_path / "other", 1, classes=("a",), seed=7)
    image.write_bytes((tmp_path / "other" / "a" / "a_000.png").read_bytes())
    result = prepare(folders_cfg(store, images, "augment.strength=0.5", "cache.augmented_views=2"))
    assert counts(result) == (1, 3)  # validation hits; clean train and 2 views recompute
    assert len(entry_names(store) - before) == 3


def test_a_hit_gives_bit_identical_features_to_a_fresh_computation(tmp_path, images):
    cfg_a = folders_cfg(tmp_path / "a", images, "augment.strength=0.7", "cache.augmented_views=2")
    cfg_b = folders_cfg(tmp_path / "b", images, "augment.strength=0.7", "cache.augmented_views=2")
    prepare(cfg_a)
    hit = prepare(cfg_a)
    fresh = prepare(cfg_b)
    assert counts(hit)[1] == 0 and counts(fresh)[0] == 0

    def arrays(result):
        return [
            np.concatenate([x for x, _ in dataset])
            for dataset in (result.head.datasets.train_eval, result.head.datasets.val)
        ]

    for from_hit, from_fresh in zip(arrays(hit), arrays(fresh)):
        assert from_hit.tobytes() == from_fresh.tobytes()
    views_a = sorted((tmp_path / "a" / "cache" / "features").glob("*-s0.7-v*"))
    views_b = sorted((tmp_path / "b" / "cache" / "features").glob("*-s0.7-v*"))
    assert [p.name for p in views_a] == [p.name for p in views_b] and len(views_a) == 2
    for a, b in zip(views_a, views_b):
        assert (a / "features.npy").read_bytes() == (b / "features.npy").read_bytes()
    # The two views are different augmentations of the same images, and differ from the clean view.
    v0, v1 = (np.load(p / "features.npy") for p in views_a)
    assert not np.array_equal(v0, v1)


def test_a_fill_reports_progress_in_a_log_and_a_hit_reports_none(tmp_path, images, monkeypatch, capfd):
    monkeypatch.setenv("REGSWEEP_PROGRESS_SECONDS", "0")  # a line per batch, as a long fill prints one every 10 s
    monkeypatch.setattr(fit, "COMPUTE_BATCH", 4)  # 8 training images: two batches
    cfg = folders_cfg(tmp_path / "mlruns", images, "augment.strength=0.5", "cache.augmented_views=2")
    prepare(cfg)
    filled = capfd.readouterr().err.splitlines()
    assert "filling the feature cache (train, augmented view 2 of 2): 8 / 8 images, done in 00:00" in filled
    assert "filling the feature cache (train, clean images): 8 / 8 images, done in 00:00" in filled
    prepare(cfg)
    assert "filling the feature cache" not in capfd.readouterr().err


def test_the_cached_features_are_the_prefix_of_the_un_augmented_images(tmp_path, images):
    import keras

    cfg = folders_cfg(tmp_path / "mlruns", images, "model.unfrozen_blocks=1")
    result = prepare(cfg)  # phase 2 reads the cut below the top block
    keras.utils.set_random_seed(0)  # the same seeded random backbone as the run's
    prefix, _ = models.split_backbone("demo_cnn", models.load_backbone("demo_cnn", 32, None), 1)
    splits = data.resolve_splits(cfg.data, 32, tmp_path)
    raw, labels = data.load_images(splits.train, splits.class_names, 32)
    cached = np.concatenate([x for x, _ in result.tune.datasets.train_eval])
    np.testing.assert_allclose(cached, prefix.predict(raw.astype("float32"), verbose=0), rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.concatenate([y for _, y in result.tune.datasets.train_eval]), labels)


def test_one_pass_over_the_images_stores_every_cut_up_to_the_top(tmp_path, images, monkeypatch):
    """A study mixes unfrozen-block counts: the pass a deep cut needs serves the shallower ones."""
    passes = []
    write = fit.write_features
    monkeypatch.setattr(
        fit, "write_features", lambda folders, *args, **kw: (passes.append(len(folders)), write(folders, *args, **kw))
    )
    store = tmp_path / "mlruns"
    views = ("augment.strength=0.5", "cache.augmented_views=2")
    deep = prepare(folders_cfg(store, images, *views, "model.unfrozen_blocks=2"))
    assert counts(deep) == (0, 12) and passes == [3, 3, 3, 3]  # 4 views × cuts 0, 1, 2
    for unfrozen in (1, 0):
        shallow = prepare(folders_cfg(store, images, *views, f"model.unfrozen_blocks={unfrozen}"))
        assert counts(shallow) == (4 * (unfrozen + 1), 0)
    assert len(passes) == 4


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete meta", "half-written folder"])
def test_a_damaged_or_half_written_entry_is_detected_and_recomputed(tmp_path, images, damage):
    store = tmp_path / "mlruns"
    cfg = folders_cfg(store, images)
    good = np.concatenate([x for x, _ in prepare(cfg).head.datasets.val])
    entry = next((store / "cache" / "features").glob("*-validation-*"))
    features = entry / "features.npy"
    if damage == "flip a byte":
        raw = bytearray(features.read_bytes())
        raw[-3] ^= 0xFF
        features.write_bytes(bytes(raw))
    elif damage == "truncate":
        features.write_bytes(features.read_bytes()[:-100])
    elif damage == "delete meta":
        (entry / "meta.json").unlink()
    else:  # a copy interrupted half-way: the folder exists, its files are partial
        for path in entry.iterdir():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = prepare(cfg)
    assert counts(result) == (1, 1)  # train hits; validation is recomputed
    assert np.concatenate([x for x, _ in result.head.datasets.val]).tobytes() == good.tobytes()
    assert json.loads((entry / "meta.json").read_text())["files"]["features.npy"]["bytes"] == features.stat().st_size


FILLER = r"""
import sys, time
from pathlib import Path
import numpy as np
from regsweep.cache import FeatureStore, FEATURES, LABELS

root, log = Path(sys.argv[1]), Path(sys.argv[2])

def fill(folder):
    with open(log, "a") as handle:
        handle.write("fill\n")
    out = np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float32, shape=(64, 1024))
    for row in range(64):  # slowly, so the other worker and the watcher overlap with it
        out[row] = row
        time.sleep(0.01)
    out.flush()
    np.save(folder / LABELS, np.arange(64, dtype=np.int32))

entry = FeatureStore(root, 10**9).get({"key": "shared"}, "shared", fill)
assert entry.features.shape == (64, 1024) and float(entry.features[63, 0]) == 63.0
print("hit" if entry.hit else "filled")
"""


def test_two_processes_filling_one_entry_never_expose_a_partial_file(tmp_path):
    root, log = tmp_path / "cache", tmp_path / "fills.log"
    workers = [
        subprocess.Popen([sys.executable, "-c", FILLER, str(root), str(log)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    seen_complete = 0
    while any(worker.poll() is None for worker in workers):
        for path in (root / "features").glob("[!.]*") if (root / "features").is_dir() else ():
            # Anything visible under its final name is whole: meta present, sizes and checksums right.
            features, labels = cache._verified_arrays(path)
            assert features.shape == (64, 1024) and labels[-1] == 63
            seen_complete += 1
        time.sleep(0.005)
    outputs = sorted(worker.communicate()[0].strip() for worker in workers)
    assert [worker.returncode for worker in workers] == [0, 0]
    assert outputs == ["filled", "hit"]  # the lock made the second wait and reuse, not recompute
    assert log.read_text().count("fill") == 1
    assert [p.name for p in (root / "features").iterdir()] == [next((root / "features").glob("[!.]*")).name]
    assert seen_complete > 0


def test_eviction_keeps_the_cache_under_its_cap_least_recently_used_first(tmp_path):
    megabyte_rows = 1_000_000 // (4 * 1024)

    def fill(folder):
        np.save(folder / cache.FEATURES, np.ones((megabyte_rows, 1024), np.float32))
        np.save(folder / cache.LABELS, np.zeros(megabyte_rows, np.int32))

    store = cache.FeatureStore(tmp_path / "cache", max_bytes=3_500_000)
    for name in ("a", "b", "c"):
        store.get({"entry": name}, name, fill)
        time.sleep(0.02)  # distinct last-used times
    store.get({"entry": "a"}, "a", fill)  # a is now the most recently used
    time.sleep(0.02)
    store.get({"entry": "d"}, "d", fill)
    names = {row["path"].name.split("-")[0] for row in store.listing()}
    assert names == {"a", "c", "d"}  # b was the least recently used
    assert sum(row["bytes"] for row in store.listing()) <= store.max_bytes

    tiny = cache.FeatureStore(tmp_path / "tiny", max_bytes=10)
    entry = tiny.get({"entry": "big"}, "big", fill)  # larger than the cap: kept while in use
    assert entry.path.is_dir() and entry.features.shape[0] == megabyte_rows
    tiny.get({"entry": "next"}, "next", fill)
    assert [row["path"].name.split("-")[0] for row in tiny.listing()] == ["next"]


def test_cache_info_lists_entries_and_clear_empties_the_folder(tmp_path, images, capsys):
    from regsweep import cli

    store = tmp_path / "mlruns"
    prepare(folders_cfg(store, images))
    (store / "cache" / "features" / ".staging-left-by-a-killed-worker").mkdir()
    cli.main(["cache", "info", f"paths.store={store}"])
    printed = capsys.readouterr().out
    assert f"Feature cache {store / 'cache' / 'features'}: 2 entries" in printed
    assert "demo_cnn-train-cut0-flatten-clean-" in printed
    assert "demo_cnn-validation-cut0-flatten-clean-" in printed
    assert "of 20.000 GB (cache.max_gb)" in printed

    cli.main(["cache", "clear", f"paths.store={store}"])
    assert "Removed 2 entries" in capsys.readouterr().out
    assert list((store / "cache" / "features").iterdir()) == []
    with pytest.raises(SystemExit) as stopped:
        cli.main(["cache", "tidy"])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # one sentence: what is wrong, and where to look
    assert line.startswith("regsweep: error: argument info|clear: invalid choice: 'tidy'")
    assert line.endswith("see regsweep cache --help")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["cache"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "regsweep: error: regsweep cache needs a subcommand: info or clear\n"
