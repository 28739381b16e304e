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
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_a_single_class_is_refused(tmp_path):
    write_class_folders(tmp_path / "train", 2, classes=("cat",))
    write_class_folders(tmp_path / "val", 2, classes=("cat",))
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(RegsweepError, match="needs at least 2"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_missing_folder_is_named(tmp_path):
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'nope'}", f"data.val_dir={tmp_path / 'nope'}")
    with pytest.raises(RegsweepError, match=r"data\.train_dir=.*nope is not a folder"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


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
    splits = data.resolve_splits(cfg, 32, tmp_path / "store")
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


def _write_bad_files(folder: Path) -> dict[str, str]:
    """One of each kind of unusable file, by name → the words its message must contain."""
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, as Keras ignores it
    return {"corrupt.jpg": "cannot be decoded", "truncated.png": "cannot be decoded",
            "empty.jpg": "empty (zero-byte)", "notes.txt": "not an image file"}


def test_unreadable_files_stop_the_run_naming_one_and_the_fix(tmp_path):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2)
    _write_bad_files(tmp_path / "train" / "square")
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(RegsweepError, match=r"square/\w+\.\w+ in data\.train_dir=.* and 3 more: .*data\.on_bad_image=skip"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_skip_leaves_out_each_unreadable_file_with_a_warning_and_a_new_fingerprint(tmp_path, capfd):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2)
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}",
                   "data.on_bad_image=skip")
    clean = data.resolve_splits(cfg, 32, tmp_path / "store")
    clean_fingerprint = data.fingerprint(clean)
    expected = _write_bad_files(tmp_path / "train" / "square")
    splits = data.resolve_splits(cfg, 32, tmp_path / "store")
    warning = capfd.readouterr().err
    for name, words in expected.items():
        assert f"square/{name}: " in warning and words in warning.split(f"square/{name}: ")[1].splitlines()[0]
    assert ".DS_Store" not in warning
    assert sorted(Path(p).name for p in splits.skipped) == sorted(expected)
    # The usable images are exactly the clean set, so the data fingerprint matches it...
    assert data.fingerprint(splits) == clean_fingerprint
    images, labels = data.load_images(splits.train, splits.class_names, 32)
    assert len(images) == 9 and sorted(np.bincount(labels)) == [3, 3, 3]
    # ...and differs from that of the folder with the unreadable files in it.
    raw = data.Splits(tmp_path / "train", splits.val, None, splits.class_names)
    assert data.fingerprint(raw) != clean_fingerprint


def test_an_empty_class_folder_is_named(tmp_path):
    write_class_folders(tmp_path / "train", 2)
    write_class_folders(tmp_path / "val", 2)
    for image in (tmp_path / "val" / "stripes").iterdir():
        image.unlink()
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(RegsweepError, match=r"class folder stripes in data\.val_dir=.* has no usable images"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_one_folder_given_as_two_splits_is_refused(tmp_path):
    write_class_folders(tmp_path / "train", 2)
    write_class_folders(tmp_path / "test", 2, seed=1)
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'test'}",
                   f"data.test_dir={tmp_path / 'test'}/")
    with pytest.raises(RegsweepError, match=r"data\.test_dir=.*test is the same folder as data\.val_dir"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_images_copied_into_another_split_are_found_by_content_and_warned_about(tmp_path, capsys):
    from regsweep import sweep

    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 3, seed=1)
    write_class_folders(tmp_path / "test", 3, seed=2)
    (tmp_path / "test" / "circle" / "renamed.png").write_bytes((tmp_path / "train" / "circle" / "circle_001.png").read_bytes())
    args = [f"paths.store={tmp_path / 'store'}", "data=folders", f"data.train_dir={tmp_path / 'train'}",
            f"data.val_dir={tmp_path / 'val'}", f"data.test_dir={tmp_path / 'test'}"]
    prepared = sweep.prepare(args)
    assert prepared.shared_images == [["train/circle/circle_001.png", "test/circle/renamed.png"]]
    warning = capsys.readouterr().err
    assert "1 image(s) appear in more than one split" in warning and "train/circle/circle_001.png = test/circle/renamed.png" in warning


def test_a_training_subset_is_stratified_nested_and_keeps_every_class(tmp_path):
    write_class_folders(tmp_path / "train", 8)
    write_class_folders(tmp_path / "val", 2, seed=1)
    base = ["data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}"]
    quarter, half = (data.resolve_splits(data_cfg(*base, f"data.train_fraction={f}"), 32, tmp_path / "store").train
                     for f in (0.1, 0.5))
    names = {folder: {c: {p.name for p in data.image_files(folder, c)} for c in ("circle", "square", "stripes")}
             for folder in (quarter, half)}
    assert all(len(files) == 1 for files in names[quarter].values())  # ceil(0.8) = 1: at least one per class
    assert all(len(files) == 4 for files in names[half].values())
    assert all(names[quarter][c] <= names[half][c] for c in names[half])  # the smaller subset is part of the larger
