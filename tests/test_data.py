"""Folder datasets: class checks, the seeded stratified split, fingerprints and image modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_class_folders

from regsweep import data
from regsweep.config import RegsweepError, compose


def data_cfg(*overrides: str):
    return compose(list(overrides)).data


def test_mismatched_class_folders_stop_the_run_naming_the_mismatch(tmp_path):
    write_class_folders(tmp_path / "train", 2, classes=("cat", "dog", "fox"))
    write_class_folders(tmp_path / "val", 2, classes=("cat", "dog", "owl"))
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(RegsweepError, match="only in train: fox; only in validation: owl"):
        data.resolve_splits(cfg, 32, 0, tmp_path / "store")


def test_a_single_class_is_refused(tmp_path):
    write_class_folders(tmp_path / "train", 2, classes=("cat",))
    write_class_folders(tmp_path / "val", 2, classes=("cat",))
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(RegsweepError, match="needs at least 2"):
        data.resolve_splits(cfg, 32, 0, tmp_path / "store")


def test_missing_folder_is_named(tmp_path):
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'nope'}", f"data.val_dir={tmp_path / 'nope'}")
    with pytest.raises(RegsweepError, match=r"data\.train_dir=.*nope is not a folder"):
        data.resolve_splits(cfg, 32, 0, tmp_path / "store")


def _split_files(root: Path) -> dict[str, dict[str, set[str]]]:
    return {
        split.name: {c.name: {f.name for f in c.iterdir()} for c in split.iterdir()}
        for split in root.iterdir()
    }


def test_one_folder_split_is_stratified_seeded_and_disjoint(tmp_path):
    source = write_class_folders(tmp_path / "all", 20, classes=("a", "b", "c"))
    write_class_folders(source, 10, classes=("d",))  # an unbalanced class
    first = data.split_folder(source, 0.2, 0.1, seed=7, store=tmp_path / "store")
    again = data.split_folder(source, 0.2, 0.1, seed=7, store=tmp_path / "other")
    other_seed = data.split_folder(source, 0.2, 0.1, seed=8, store=tmp_path / "store")

    files = _split_files(first)
    assert _split_files(again) == files
    assert _split_files(other_seed) != files
    for class_name, total in {"a": 20, "b": 20, "c": 20, "d": 10}.items():
        train, val, test = (files[s][class_name] for s in ("train", "validation", "test"))
        assert (len(val), len(test)) == (round(total * 0.2), round(total * 0.1))
        assert len(train) + len(val) + len(test) == total
        assert not (train & val or train & test or val & test)


def test_fingerprint_changes_when_an_image_changes(tmp_path):
    write_class_folders(tmp_path / "train", 3, classes=("a", "b"))
    write_class_folders(tmp_path / "val", 2, classes=("a", "b"), seed=1)
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    splits = data.resolve_splits(cfg, 32, 0, tmp_path / "store")
    before = data.fingerprint(splits)
    assert data.fingerprint(splits) == before
    victim = next((tmp_path / "val" / "b").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert data.fingerprint(splits) != before


def test_grayscale_rgb_and_rgba_images_load_as_rgb(tmp_path):
    write_class_folders(tmp_path / "train", 6, size=20, classes=("a", "b"), modes=("L", "RGB", "RGBA"))
    images = list(data.load_folder(tmp_path / "train", ("a", "b"), 24))
    assert len(images) == 12
    assert all(tuple(x.shape) == (24, 24, 3) for x, _ in images)
    assert sorted(int(y) for _, y in images) == [0] * 6 + [1] * 6


def test_augmentation_is_off_at_strength_zero_and_changes_images_above(tmp_path):
    cfg = compose()
    assert data.build_augmenter(0.0, "horizontal", cfg.augment, 0) is None
    augmenter = data.build_augmenter(1.0, "horizontal", cfg.augment, 0)
    batch = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    out = np.asarray(augmenter(batch, training=True))
    assert out.shape == batch.shape and not np.allclose(out, batch)
    np.testing.assert_array_equal(np.asarray(augmenter(batch, training=False)), batch)
