"""Every bad input: one sentence naming the problem and the fix, exit code 2, no traceback, and
nothing already recorded (MLflow runs, Optuna trials, cache entries) touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import write_class_folders
from regsweep import cli
from regsweep.config import SWEEPS_DIR

REGSWEEP = str(Path(sys.executable).with_name("regsweep"))
TINY = ["train.epochs=2", "train.fine_tune_epochs=1", "tracking.artifacts=none", "sweep.trials_per_worker=0"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, finished_study):
    """A store holding a finished study (MLflow runs, Optuna trials, cache entries), and good image
    folders. The store is this module's copy: the shared one is also read by `regsweep ui`, in
    another test process, which writes its logs into it."""
    root = tmp_path_factory.mktemp("bad-input")
    write_class_folders(root / "good" / "train", 3, size=32)
    write_class_folders(root / "good" / "val", 2, size=32, seed=1)  # other images than train
    store = shutil.copytree(finished_study, root / "mlruns", symlinks=True)
    return store, root / "good"


def folders(root: Path, good: Path, change=None) -> list[str]:
    """A copy of the good folders, changed by `change(train, val)`, as data=folders overrides."""
    copy = root / uuid.uuid4().hex[:8]
    shutil.copytree(good, copy)
    if change:
        change(copy / "train", copy / "val")
    return ["data=folders", f"data.train_dir={copy / 'train'}", f"data.val_dir={copy / 'val'}"]


def empty_class(train, val):
    for image in (val / "stripes").iterdir():
        image.unlink()


def class_only_in_validation(train, val):
    write_class_folders(val, 2, size=32, classes=("owl",))


def one_class(train, val):
    for folder in (train, val):
        for name in ("square", "stripes"):
            shutil.rmtree(folder / name)


def tiff_named_jpg(train, val):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(train / "circle" / "scan.jpg", format="TIFF")


def corrupt_jpeg(train, val):
    (train / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + os.urandom(300))


def truncated_png(train, val):
    whole = (train / "square" / "square_000.png").read_bytes()
    (train / "square" / "square_000.png").write_bytes(whole[: len(whole) // 2])


def zero_byte(train, val):
    (val / "circle" / "empty.png").write_bytes(b"")


def non_image(train, val):
    (train / "stripes" / "labels.csv").write_text("file,label\n")


def broken_sweep_file(cwd: Path, text: str):
    """A user's own sweeps/<name>.yaml in the working directory, found before regsweep's own."""
    name = f"_broken_{uuid.uuid4().hex[:8]}"
    (cwd / "sweeps").mkdir(exist_ok=True)
    (cwd / "sweeps" / f"{name}.yaml").write_text(text)
    return name


# (case, command, overrides or a function of (root, good) giving them, words the sentence must contain)
CASES = [
    (
        "missing data folder",
        "sweep",
        lambda r, g: ["data=folders", f"data.train_dir={r}/nowhere", f"data.val_dir={g}/val"],
        "data.train_dir=",
        "is not a folder: point it at a folder with one sub-folder per class",
    ),
    (
        "empty class folder",
        "sweep",
        lambda r, g: folders(r, g, empty_class),
        "class folder stripes in data.val_dir=",
        "has no usable images: add images",
    ),
    (
        "class only in validation",
        "sweep",
        lambda r, g: folders(r, g, class_only_in_validation),
        "class folders differ",
        "only in validation: owl",
    ),
    ("only one class", "sweep", lambda r, g: folders(r, g, one_class), "has 1 class sub-folder(s)", "at least 2"),
    (
        "corrupt JPEG",
        "sweep",
        lambda r, g: folders(r, g, corrupt_jpeg),
        "circle/broken.jpg in data.train_dir=",
        "cannot be decoded as an image",
    ),
    (
        "TIFF named .jpg",
        "sweep",
        lambda r, g: folders(r, g, tiff_named_jpg),
        "circle/scan.jpg in data.train_dir=",
        "is a TIFF image, which Keras cannot decode whatever the file is named: convert it to JPEG or PNG, or set",
    ),
    (
        "image over data.max_pixels",
        "sweep",
        lambda r, g: [*folders(r, g), "data.max_pixels=1000"],
        "in data.train_dir=",
        "is 32 x 32 pixels, over data.max_pixels=1,000 and 8 more: downscale it (it trains at model.image_size "
        "anyway) or raise data.max_pixels, or set data.on_bad_image=skip",
    ),
    (
        "truncated PNG",
        "sweep",
        lambda r, g: folders(r, g, truncated_png),
        "square/square_000.png in data.train_dir=",
        "cannot be decoded as an image",
    ),
    (
        "zero-byte file",
        "sweep",
        lambda r, g: folders(r, g, zero_byte),
        "circle/empty.png in data.val_dir=",
        "is an empty (zero-byte) file",
    ),
    (
        "non-image file among images",
        "sweep",
        lambda r, g: folders(r, g, non_image),
        "stripes/labels.csv in data.train_dir=",
        "data.on_bad_image=skip",
    ),
    (
        "unknown override key",
        "train",
        lambda r, g: ["model.dropuot=0.3"],
        "model.dropuot is not a setting",
        "check the spelling",
    ),
    ("dropout >= 1", "train", lambda r, g: ["model.dropout=1.0"], "model.dropout=1.0 is outside [0, 1)", "use a rate"),
    ("negative learning rate", "sweep", lambda r, g: ["optim.lr=-0.001"], "optim.lr=-0.001 must be positive", "1e-3"),
    (
        "unfrozen blocks beyond the backbone",
        "train",
        lambda r, g: ["model.unfrozen_blocks=9"],
        "model.unfrozen_blocks=9 is not possible for demo_cnn, which has 3 blocks",
        "from 0 to 3",
    ),
    (
        "unknown backbone",
        "sweep",
        lambda r, g: ["model=resnet18"],
        "model=resnet18 is not a known option",
        "mobilenet_v2",
    ),
    (
        "weights path that does not exist",
        "sweep",
        lambda r, g: [f"model.weights={r}/missing.weights.h5"],
        "missing.weights.h5 is not a file",
        "give the path of a weights file",
    ),
    (
        "unreachable storage URL",
        "sweep",
        lambda r, g: ["sweep.storage=postgresql://ada:secret@127.0.0.1:9/optuna"],
        "sweep.storage=postgresql://ada:***@127.0.0.1:9/optuna cannot be opened",
        "check the URL",
    ),
    (
        "sweep file that is not YAML",
        "sweep",
        lambda r, g: [f"sweep={broken_sweep_file(r, 'params: [unclosed')}"],
        "is not valid YAML",
        "fix the file",
    ),
    (
        "sweep file with a malformed search space",
        "sweep",
        lambda r, g: [f"sweep={broken_sweep_file(r, _space_file('model.dropout: interval(0.7)'))}"],
        "sweep.params model.dropout: 'interval(0.7)'",
        "use interval(a, b)",
    ),
    (
        "study name taken by a different search space",
        "sweep",
        lambda r, g: ["model.dropout=interval(0.0, 0.3)"],
        "study 'regularization'",
        "was started with a different search_space",
    ),
    (
        "study run on other images",
        "sweep",
        lambda r, g: folders(r, g),
        "study 'regularization' was run on other images (data fingerprint",
        "point data.* at the same images",
    ),
    (
        "unknown bad-image policy",
        "sweep",
        lambda r, g: ["data.on_bad_image=ignore"],
        "data.on_bad_image=ignore is unknown",
        "use error",
    ),
    (
        "validation folder that is the training folder",
        "sweep",
        lambda r, g: ["data=folders", f"data.train_dir={g}/train", f"data.val_dir={g}/train/../train"],
        "data.val_dir=",
        "is the same folder as data.train_dir",
        "point it at a separate folder",
    ),
    (
        "training share out of range",
        "train",
        lambda r, g: ["data.train_fraction=1.5"],
        "data.train_fraction=1.5 must be in (0, 1]",
        "such as 0.5",
    ),
    (
        "learning-curve share out of range",
        "sweep",
        lambda r, g: ["sweep.reevaluate.curve=[0.5,1.0]"],
        "sweep.reevaluate.curve=[0.5, 1.0]",
        "strictly between 0 and 1",
    ),
    (
        "margin out of range",
        "sweep",
        lambda r, g: ["sweep.reevaluate.margin=2"],
        "sweep.reevaluate.margin=2 must be a test-accuracy difference between 0 and 1",
        "such as 0.02",
    ),
    (
        "negative race seeds",
        "sweep",
        lambda r, g: ["sweep.reevaluate.race_seeds=-1"],
        "sweep.reevaluate.race_seeds=-1 must be an integer >= 0",
        "at or below seeds: one race look",
    ),
    (
        "unquoted study name with letters Hydra cannot read",
        "sweep",
        lambda r, g: ["sweep.study=grüße"],
        "'sweep.study=grüße' is not a study name regsweep can use (it cannot read 'ü', 'ß' unquoted)",
        "such as sweep.study=my-study",
    ),
    (
        "override Hydra's grammar cannot read",
        "sweep",
        lambda r, g: ["model.dropout=0.5)"],
        "'model.dropout=0.5)' is not an override Hydra can read (it cannot read ')' unquoted)",
        "quote the value, as in \"model.dropout='0.5)'\"",
    ),
    (
        "negative screening",
        "sweep",
        lambda r, g: ["sweep.reevaluate.screen=-1"],
        "sweep.reevaluate.screen=-1 must be an integer >= 0",
        "at or below top_k: no screening",
    ),
    (
        "re-evaluation with no seeds",
        "report",
        lambda r, g: ["--reevaluate", "sweep.reevaluate.seeds=0"],
        "sweep.reevaluate.seeds=0: re-evaluation needs at least 1 seed",
        "such as 3",
    ),
    (
        "unreachable tracking server",
        "train",
        lambda r, g: ["tracking.uri=http://ada:secret@127.0.0.1:9/"],
        "tracking.uri=http://ada:***@127.0.0.1:9/ cannot be reached",
        "start the server or fix the URL",
    ),
    (
        "sweep to an unreachable tracking server",
        "sweep",
        lambda r, g: ["tracking.uri=http://ada:secret@127.0.0.1:9/"],
        "tracking.uri=http://ada:***@127.0.0.1:9/ cannot be reached",
        "the connection was refused",
    ),
    (
        "study name that leaves the store",
        "sweep",
        lambda r, g: ["sweep.study=../../evil"],
        "sweep.study='../../evil' is not a safe study name",
        "letters, digits",
    ),
    (
        "report of a study name that leaves the store",
        "report",
        lambda r, g: ["sweep.study=/tmp/evil"],
        "sweep.study='/tmp/evil' is not a safe study name",
        "starting with a letter or digit",
    ),
    ("export without a run id", "export", lambda r, g: [], "regsweep export needs one run id", "--out DIR"),
    (
        "export from a folder without a store",
        "export",
        lambda r, g: ["0123456789abcdef", f"paths.store={r}/elsewhere"],
        "no MLflow store at",
        "run regsweep export in the folder that holds mlruns/",
    ),
    (
        "export of a run that is not in the store",
        "export",
        lambda r, g: ["0123456789abcdef"],
        "no MLflow run 0123456789abcdef in sqlite:///",
        "copy the run id from the MLflow UI",
    ),
]


def _space_file(line: str) -> str:
    text = (SWEEPS_DIR / "regularization.yaml").read_text()
    return text.replace("  model.dropout: interval(0.0, 0.7)", f"  {line}")


def snapshot(store: Path) -> dict[str, str]:
    """Every recorded file's content hash; Hydra's per-command log folders are not records."""
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).parts[0] != "hydra"
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, command, make_args, words", [(c[0], c[1], c[2], c[3:]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_sentence_exit_2_and_leaves_records_alone(
    recorded, tmp_path, monkeypatch, capfd, case, command, make_args, words
):
    store, good = recorded
    args = make_args(tmp_path, good)
    before = snapshot(store)
    returncode, stdout, stderr = regsweep(
        command, [f"paths.store={store}", *TINY[:3], *args], tmp_path, monkeypatch, capfd
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    print(f"{case}: {stderr.strip()}")  # pytest -s shows what a user sees
    assert returncode == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("regsweep: error: "), stderr[-2000:]
    for expected in words:
        assert expected in lines[0]
    assert "Traceback" not in stdout + stderr and "secret" not in stdout + stderr
    after = snapshot(store)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    added = [name for name in after if name not in before and not name.startswith("cache/image-checks/")]
    assert not changed and not added, (changed, added)


def regsweep(command: str, args: list[str], cwd: Path, monkeypatch, capfd) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `regsweep <command> <args>` run from `cwd`.

    `regsweep train` runs as its own process, as Hydra's app; the other commands run in this
    process through the same entry point (`regsweep.cli.main`), which saves starting Python,
    MLflow and Optuna for each case.
    """
    if command == "train":
        result = subprocess.run([REGSWEEP, command, *args], capture_output=True, text=True, timeout=300, cwd=cwd)
        return result.returncode, result.stdout, result.stderr
    monkeypatch.chdir(cwd)
    capfd.readouterr()
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, *args])
    out, err = capfd.readouterr()
    return stopped.value.code, out, err


def test_verbose_shows_the_traceback_behind_the_sentence(tmp_path):
    result = subprocess.run(
        [REGSWEEP, "sweep", f"paths.store={tmp_path}", "optim.lr=-1", "--verbose"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "optim.lr=-1 must be positive" in result.stderr


@pytest.fixture
def silent_server():
    """A port where a server takes connections but never answers, as behind a firewall that
    drops packets: the connection opens, and the database's greeting never comes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # never accepted: the kernel completes the handshake, then nothing
        yield server.getsockname()[1]


def test_a_study_database_that_never_answers_stops_the_sweep_within_the_timeout(
    silent_server, tmp_path, monkeypatch, capfd
):
    url = f"postgresql+psycopg://ada:secret@127.0.0.1:{silent_server}/optuna"
    started = time.monotonic()
    returncode, stdout, stderr = regsweep(
        "sweep",
        [f"paths.store={tmp_path / 'store'}", *TINY, f"sweep.storage={url}", "tracking.connect_timeout=2"],
        tmp_path,
        monkeypatch,
        capfd,
    )
    elapsed = time.monotonic() - started
    print(f"silent database server: {elapsed:.1f} s: {stderr.strip()}")
    assert returncode == 2 and elapsed < 15, (elapsed, stderr[-2000:])
    sentence = (
        f"regsweep: error: sweep.storage=postgresql+psycopg://ada:***@127.0.0.1:{silent_server}/optuna cannot be "
        "opened ((psycopg.errors.ConnectionTimeout) connection timeout expired): check the URL and that its "
        "database answers within tracking.connect_timeout (2 s), or leave it unset for the local SQLite file"
    )
    assert stderr.strip().splitlines() == [sentence]
    assert "secret" not in stdout + stderr
    assert not list((tmp_path / "store").glob("mlflow.db")), "no MLflow run or experiment is recorded"


def test_a_report_in_a_folder_without_a_store_creates_nothing(tmp_path, monkeypatch, capfd):
    returncode, _, stderr = regsweep("report", ["nosuchstudy"], tmp_path, monkeypatch, capfd)
    assert returncode == 2 and stderr.startswith("regsweep: error: no study named 'nosuchstudy': there is no study")
    assert list(tmp_path.iterdir()) == []  # no empty mlruns/optuna.db made to say so
