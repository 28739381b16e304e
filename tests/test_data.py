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
    return {split.name: {c.name: {f.name for f in c.iterdir()} for c in split.iterdir()} for split in root.iterdir()}


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
    return {
        "corrupt.jpg": "cannot be decoded",
        "truncated.png": "cannot be decoded",
        "empty.jpg": "empty (zero-byte)",
        "notes.txt": "not an image file",
    }


def test_unreadable_files_stop_the_run_naming_one_and_the_fix(tmp_path):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2)
    _write_bad_files(tmp_path / "train" / "square")
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    with pytest.raises(
        RegsweepError, match=r"square/\w+\.\w+ in data\.train_dir=.* and 3 more: .*data\.on_bad_image=skip"
    ):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_skip_leaves_out_each_unreadable_file_with_a_warning_and_a_new_fingerprint(tmp_path, capfd):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2)
    cfg = data_cfg(
        "data=folders",
        f"data.train_dir={tmp_path / 'train'}",
        f"data.val_dir={tmp_path / 'val'}",
        "data.on_bad_image=skip",
    )
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
    cfg = data_cfg(
        "data=folders",
        f"data.train_dir={tmp_path / 'train'}",
        f"data.val_dir={tmp_path / 'test'}",
        f"data.test_dir={tmp_path / 'test'}/",
    )
    with pytest.raises(RegsweepError, match=r"data\.test_dir=.*test is the same folder as data\.val_dir"):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_images_copied_into_another_split_are_found_by_content_and_warned_about(tmp_path, capsys):
    from regsweep import sweep

    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 3, seed=1)
    write_class_folders(tmp_path / "test", 3, seed=2)
    (tmp_path / "test" / "circle" / "renamed.png").write_bytes(
        (tmp_path / "train" / "circle" / "circle_001.png").read_bytes()
    )
    args = [
        f"paths.store={tmp_path / 'store'}",
        "data=folders",
        f"data.train_dir={tmp_path / 'train'}",
        f"data.val_dir={tmp_path / 'val'}",
        f"data.test_dir={tmp_path / 'test'}",
    ]
    prepared = sweep.prepare(args)
    assert prepared.shared_images == [["train/circle/circle_001.png", "test/circle/renamed.png"]]
    warning = capsys.readouterr().err
    assert (
        "1 image(s) appear in more than one split" in warning
        and "train/circle/circle_001.png = test/circle/renamed.png" in warning
    )


def test_a_training_subset_is_stratified_nested_and_keeps_every_class(tmp_path):
    write_class_folders(tmp_path / "train", 8)
    write_class_folders(tmp_path / "val", 2, seed=1)
    base = ["data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}"]
    quarter, half = (
        data.resolve_splits(data_cfg(*base, f"data.train_fraction={f}"), 32, tmp_path / "store").train
        for f in (0.1, 0.5)
    )
    names = {
        folder: {c: {p.name for p in data.image_files(folder, c)} for c in ("circle", "square", "stripes")}
        for folder in (quarter, half)
    }
    assert all(len(files) == 1 for files in names[quarter].values())  # ceil(0.8) = 1: at least one per class
    assert all(len(files) == 4 for files in names[half].values())
    assert all(names[quarter][c] <= names[half][c] for c in names[half])  # the smaller subset is part of the larger


def _odd_class_tree(root: Path) -> Path:
    """Class folders holding what users' folders hold: sub-folders (one with a name already used
    above it), hidden files and folders, odd suffixes, a working symlink and a symlinked folder."""
    write_class_folders(root, 2, classes=("cat", "dog"))
    cat, good = root / "cat", (root / "cat" / "cat_000.png").read_bytes()
    for name in ("sub/cat_000.png", "sub/deeper/upper.JPG", ".thumbs/small.png", ".hidden.png", ".png"):
        (cat / name).parent.mkdir(parents=True, exist_ok=True)
        (cat / name).write_bytes(good)
    for name in ("photo.webp", "photo.png.txt", "sub/notes.md", ".DS_Store", ".thumbs/index.db"):
        (cat / name).write_bytes(good)
    (cat / "again.png").symlink_to(cat / "cat_000.png")
    (root.parent / "elsewhere").mkdir()
    (root.parent / "elsewhere" / "far.png").write_bytes(good)
    (cat / "linked").symlink_to(root.parent / "elsewhere")
    return root


def test_the_check_vouches_for_exactly_the_files_keras_reads(tmp_path):
    import keras

    root = _odd_class_tree(tmp_path / "train")
    loader = keras.utils.image_dataset_from_directory(root, class_names=["cat", "dog"], shuffle=False, verbose=False)
    keras_reads = [Path(p).relative_to(root).as_posix() for p in loader.file_paths]
    checked = [p.relative_to(root).as_posix() for c in ("cat", "dog") for p in data.image_files(root, c)]
    assert checked == keras_reads
    assert {"cat/sub/cat_000.png", "cat/sub/deeper/upper.JPG", "cat/.thumbs/small.png", "cat/.png"} <= set(checked)
    # What Keras leaves unread is named, hidden clutter is not.
    bad = {p.relative_to(root).as_posix(): why for p, why in data.unusable_files(root, ("cat", "dog"), tmp_path / "s")}
    assert sorted(bad) == ["cat/linked", "cat/photo.png.txt", "cat/photo.webp", "cat/sub/notes.md"]
    assert "symbolic link to a folder" in bad["cat/linked"]
    # The loader reads that same list (it compares), and a nested edit changes the fingerprint.
    assert len(data.load_images(root, ("cat", "dog"), 16)[1]) == len(keras_reads)
    before = data.folder_fingerprint(root, ("cat", "dog"))
    (root / "cat" / "sub" / "deeper" / "upper.JPG").write_bytes(b"edited")
    assert data.folder_fingerprint(root, ("cat", "dog")) != before


@pytest.mark.parametrize("kind", ["loop", "broken"])
def test_a_bad_symlink_stops_the_run_before_it_starts_naming_it_and_the_fix(tmp_path, kind):
    write_class_folders(tmp_path / "train", 2)
    write_class_folders(tmp_path / "val", 2, seed=1)
    link = tmp_path / "train" / "circle" / "x.jpg"
    link.symlink_to("x.jpg" if kind == "loop" else tmp_path / "moved-away.jpg")
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    words = "symbolic link loop" if kind == "loop" else "broken symbolic link"
    with pytest.raises(
        RegsweepError, match=rf"circle/x\.jpg in data\.train_dir=.* {words} .*: repair or remove the link"
    ):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_skip_leaves_out_bad_links_and_nested_corrupt_images_and_keras_reads_the_rest(tmp_path, capfd):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2, seed=1)
    square = tmp_path / "train" / "square"
    (square / "sub").mkdir()
    (square / "sub" / "square_000.png").write_bytes(
        (square / "square_001.png").read_bytes()
    )  # kept: same name as above
    (square / "sub" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (square / "loop.png").symlink_to("loop.png")
    (square / "gone.png").symlink_to(tmp_path / "nowhere.png")
    base = ["data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}"]
    with pytest.raises(RegsweepError, match=r"square/gone\.png in data\.train_dir=.* and 2 more"):
        data.resolve_splits(data_cfg(*base), 32, tmp_path / "store")
    splits = data.resolve_splits(data_cfg(*base, "data.on_bad_image=skip"), 32, tmp_path / "store")
    assert sorted(Path(p).relative_to(square).as_posix() for p in splits.skipped) == [
        "gone.png",
        "loop.png",
        "sub/bad.jpg",
    ]
    warning = capfd.readouterr().err
    assert "square/sub/bad.jpg: cannot be decoded" in warning and "square/loop.png: is a symbolic link loop" in warning
    _images, labels = data.load_images(splits.train, splits.class_names, 32)  # Keras reads the view without crashing
    assert np.bincount(labels).tolist() == [3, 4, 3]  # the nested good image is kept, under its own name
    assert (splits.train / "square" / "sub" / "square_000.png").is_file()


def test_a_split_view_keeps_nested_files_under_their_own_paths(tmp_path):
    source = write_class_folders(tmp_path / "all", 6, classes=("a", "b"))
    for class_name in ("a", "b"):
        (source / class_name / "sub").mkdir()
        for i in range(4):  # the same names as the files above them
            (source / class_name / "sub" / f"{class_name}_{i:03d}.png").write_bytes(
                (source / class_name / f"{class_name}_{5 - i:03d}.png").read_bytes()
            )
    view = data.split_folder(source, 0.2, 0.0, seed=0, store=tmp_path / "store")
    for class_name in ("a", "b"):
        seen = [
            p.relative_to(view / split / class_name).as_posix()
            for split in ("train", "validation")
            for p in data.image_files(view / split, class_name)
        ]
        assert sorted(seen) == sorted(
            [f"{class_name}_{i:03d}.png" for i in range(6)] + [f"sub/{class_name}_{i:03d}.png" for i in range(4)]
        )


def test_a_class_folder_spelled_nfc_in_one_split_and_nfd_in_another_is_one_class(tmp_path):
    import unicodedata

    nfc, nfd = (unicodedata.normalize(form, "Kleid-ü") for form in ("NFC", "NFD"))
    write_class_folders(tmp_path / "train", 2, classes=(nfc, "Hose"))
    write_class_folders(tmp_path / "val", 3, classes=(nfd, "Hose"), seed=1)
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    splits = data.resolve_splits(cfg, 32, tmp_path / "store")
    assert splits.class_names == ("Hose", nfc)
    # Keras reads the NFD folder as the same class, with the same label as in train.
    assert np.bincount(data.load_images(splits.val, splits.class_names, 16)[1]).tolist() == [3, 3]
    assert np.bincount(data.load_images(splits.train, splits.class_names, 16)[1]).tolist() == [2, 2]
    write_class_folders(tmp_path / "val", 1, classes=(nfc,), seed=2)  # now both spellings side by side
    with pytest.raises(
        RegsweepError, match="2 class folders named Kleid-ü, spelled in different Unicode normalizations"
    ):
        data.resolve_splits(cfg, 32, tmp_path / "store")


def test_a_comma_in_a_class_folder_name_is_refused_naming_the_folder(tmp_path):
    write_class_folders(tmp_path / "all", 4, classes=("Hose,lang", "Hemd"))
    cfg = data_cfg("data=split", f"data.dir={tmp_path / 'all'}")
    with pytest.raises(
        RegsweepError, match=r"class folder Hose,lang in data\.dir=.* has a comma .*: rename the folder"
    ):
        data.resolve_splits(cfg, 32, tmp_path / "store")


@pytest.mark.parametrize("names", [["猫", "犬", "cat"], ["ℊ", "x"]], ids=["cjk", "stix-only"])
def test_class_names_in_the_confusion_matrix_draw_without_missing_glyphs(names):
    """Class names come from folder names; a plot must show each class, not boxes and warnings
    (this module tests the folders that plot labels come from)."""
    import io
    import warnings

    from matplotlib import font_manager

    from regsweep import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph … missing from font(s)" is a UserWarning
        figure = plots.confusion_figure(np.eye(len(names), dtype=int), names)
        figure.savefig(io.BytesIO(), format="png")
    axis = figure.axes[0]
    labels = [label.get_text() for label in axis.get_xticklabels()]
    font_has_all = any(
        not e.name.startswith("Last Resort")
        and {ord(c) for n in names for c in n} <= set(font_manager.get_font(e.fname).get_charmap())
        for e in font_manager.fontManager.ttflist
    )
    if font_has_all:  # STIXGeneral, bundled with matplotlib, has ℊ; DejaVu Sans, the default, does not
        assert labels == names
    else:
        assert labels == [str(i) for i in range(len(names))]
        assert "0 = \\u732b, 1 = \\u72ac, 2 = cat" in " ".join(axis.get_xlabel().split())


def test_loading_stops_if_keras_would_read_other_files_than_the_check_listed(tmp_path, monkeypatch):
    write_class_folders(tmp_path / "train", 2, classes=("a", "b"))
    (tmp_path / "train" / "a" / "extra.jpg").write_bytes((tmp_path / "train" / "a" / "a_000.png").read_bytes())
    monkeypatch.setattr(data, "IMAGE_SUFFIXES", (".png",))  # as if Keras and the check disagreed on suffixes
    with pytest.raises(
        RegsweepError, match=r"Keras \S+ reads 5 image file\(s\) in .* where regsweep's image check lists 4"
    ):
        data.load_images(tmp_path / "train", ("a", "b"), 16)


def test_images_are_checked_as_the_decoder_sees_them_whatever_their_names(tmp_path):
    """Keras lists files by extension and decodes by content: a WebP or GIF named .jpg trains, a
    TIFF named .jpg would stop the loading, so it is named before anything runs."""
    import warnings

    from PIL import Image

    root = write_class_folders(tmp_path / "train", 2, size=32, classes=("cat", "dog"))
    photo = Image.open(root / "cat" / "cat_000.png").convert("RGB")
    for name, fmt in (("webp.jpg", "WEBP"), ("gif.jpg", "GIF"), ("tiff.jpg", "TIFF"), ("bmp.png", "BMP")):
        photo.save(root / "cat" / name, format=fmt)
    bad = {p.name: why for p, why in data.unusable_files(root, ("cat", "dog"), tmp_path / "s")}
    assert bad == {"tiff.jpg": "is a TIFF image, which Keras cannot decode whatever the file is named"}
    # What passes the check is what Keras decodes: every file but the TIFF loads.
    (root / "cat" / "tiff.jpg").unlink()
    assert len(data.load_images(root, ("cat", "dog"), 16)[1]) == 2 * 2 + 3

    # An image over data.max_pixels is named from its header, before decoding, and PIL's
    # decompression-bomb warning never reaches the user.
    Image.new("RGB", (300, 200)).save(root / "dog" / "large.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning raised by the check fails the test
        bad = {p.name: why for p, why in data.unusable_files(root, ("cat", "dog"), tmp_path / "s", max_pixels=50_000)}
    assert bad == {"large.png": "is 300 x 200 pixels, over data.max_pixels=50,000"}
    assert not data.unusable_files(root, ("cat", "dog"), tmp_path / "s", max_pixels=60_000)


def test_a_class_with_fewer_than_three_training_images_gets_one_warning_line(tmp_path, capsys):
    write_class_folders(tmp_path / "train", 3)
    write_class_folders(tmp_path / "val", 2, seed=1)
    for extra in ("circle_001.png", "circle_002.png"):
        (tmp_path / "train" / "circle" / extra).unlink()
    cfg = data_cfg("data=folders", f"data.train_dir={tmp_path / 'train'}", f"data.val_dir={tmp_path / 'val'}")
    data.resolve_splits(cfg, 32, tmp_path / "store")
    data.resolve_splits(cfg, 32, tmp_path / "store")  # again, as every trial does: not again
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"regsweep: warning: 1 class(es) in data.train_dir={tmp_path / 'train'} have fewer than 3 training images: "
        "circle (1); they will mostly be guessed: add photos of them if you can"
    ]
