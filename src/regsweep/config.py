"""Where the config tree lives, how it is checked, and how it is flattened for MLflow.

Everything that a user can get wrong in the config is checked here, before any data is read
or any model is built, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

# regsweep's own config tree and sweep definitions: inside the package when installed from a
# wheel (pyproject.toml maps them there), at the top of the repository in a source checkout.
_PACKAGE = Path(__file__).resolve().parent
_ROOT = _PACKAGE if (_PACKAGE / "conf").is_dir() else _PACKAGE.parents[1]
CONF_DIR = _ROOT / "conf"
SWEEPS_DIR = _ROOT / "sweeps"

# config.yaml searches mlruns/configs for the best settings a report writes; until a first
# report exists the folder is missing, which is normal and not worth a warning per trial.
MISSING_CONFIGS_WARNING = r"provider=hydra\.searchpath.*mlruns/configs is not available"


def quiet_libraries() -> None:
    """The command's own set-up of the libraries' output, run by `regsweep` and its worker child
    before either loads them; importing regsweep changes nothing (tests/test_layers.py)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # MLflow prints "View run … at <tracking URL>" for every run that ends: noise in a sweep, and
    # the URL can hold a password. regsweep prints the run id and the masked URI itself.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A progress bar per artifact MLflow downloads: noise for the dozens of tiny files a report
    # reads (per-image results, trained weights); regsweep shows its own progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs every database error with its traceback before it raises it: regsweep says
    # what went wrong in one sentence (a full or damaged store: regsweep.faults).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # urllib3 warns at each of MLflow's retries to a tracking server that does not answer:
    # regsweep says it once, and again when the server is back (regsweep.tracking.watch).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=MISSING_CONFIGS_WARNING)  # `regsweep train`'s own composition


FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
POOLINGS = ("avg", "max", "flatten")
MIN_IMAGE_SIZE = 32  # keras.applications' smallest accepted input


class RegsweepError(Exception):
    """Bad input the user can fix: shown as one sentence, exit code 2, no traceback."""


def require_extra(module: str, extra: str, feature: str, package: str = "") -> None:
    """Raises RegsweepError, one sentence naming the extra to install, when `feature` needs the
    optional `module` (from the distribution `package`) and it is not installed. The module is
    looked up, not imported: its import can take seconds, and the feature imports it anyway."""
    from importlib.util import find_spec

    try:
        found = find_spec(module) is not None
    except (ImportError, ValueError):  # its parent package is missing; it was imported as nothing
        found = False
    if not found:
        raise RegsweepError(
            f"{feature} needs the optional package {package or module}, which is not installed: "
            f"pip install 'regsweep[{extra}]'"
        )


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The config `regsweep train <overrides>` would run with.

    Sweep trials and `regsweep train` compose from the same tree, so every trial can be
    replayed with `regsweep train <its overrides>`. Bad overrides raise RegsweepError.
    """
    from hydra.errors import HydraException

    search_own_conf_first()
    register_sweeps()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MISSING_CONFIGS_WARNING)
            return _compose(list(overrides or []))
    except HydraException as error:
        raise RegsweepError(_composition_problem(error)) from error


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        return hydra_compose(config_name="config", overrides=overrides)


def _composition_problem(error: Exception) -> str:
    """Hydra's paragraph about a bad override, as one sentence with the fix."""
    from hydra.errors import OverrideParseException

    if isinstance(error, OverrideParseException):
        return override_syntax_problem(error.override)
    text = str(error)
    missing_group = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if missing_group:
        group, option = missing_group.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1].split("Config search path")[0], re.M)
        return f"{group}={option} is not a known option: choose {group}= one of {', '.join(options)}"
    unknown_key = re.search(r"Could not override '([^']+)'", text)
    if unknown_key:
        return (
            f"{unknown_key.group(1)} is not a setting: check the spelling against `regsweep train --cfg job` "
            f"(or add it with +{unknown_key.group(1)}=...)"
        )
    return f"{_first_line(error)}: check the override against `regsweep train --cfg job`"


# What Hydra's grammar reads in an unquoted value (letters and digits are ASCII only there).
UNQUOTED_VALUE_CHARACTERS = frozenset("._-/:+@%*?~$ ")


def override_syntax_problem(override: str) -> str:
    """An override Hydra's grammar cannot read, as one sentence: which characters stop it and how
    to quote the value (a study's name cannot be quoted into safety: it becomes file names)."""
    key, _, value = override.partition("=")
    odd = "".join(
        dict.fromkeys(c for c in value if not (c.isascii() and (c.isalnum() or c in UNQUOTED_VALUE_CHARACTERS)))
    )
    stops = f" (it cannot read {', '.join(repr(c) for c in odd)} unquoted)" if odd else ""
    if key.lstrip("+~") == "sweep.study":
        return f"{override!r} is not a study name regsweep can use{stops}: {STUDY_NAME_RULE}"
    return (
        f"{override!r} is not an override Hydra can read{stops}: quote the value, as in \"{key}='{value}'\" "
        "(single quotes inside the shell's double quotes)"
    )


def own_conf_dir() -> Path | None:
    """./conf in the working directory, where the user has one (and it is not regsweep's own)."""
    own = Path.cwd() / "conf"
    return own if own.is_dir() and own.resolve() != CONF_DIR else None


def config_groups() -> set[str]:
    """The config groups (data, model, ...), the user's own included."""
    own = own_conf_dir()
    roots = [CONF_DIR, own] if own else [CONF_DIR]
    return {p.name for root in roots for p in root.iterdir() if p.is_dir()}


class OwnConfFirst(SearchPathPlugin):
    """Hydra searches ./conf of the working directory before regsweep's own conf: a file there
    replaces the packaged one of the same name (conf/config.yaml, conf/model/vgg16.yaml) and a new
    one adds an option (conf/model/mine.yaml is model=mine)."""

    def manipulate_search_path(self, search_path) -> None:
        own = own_conf_dir()
        if own:
            search_path.prepend("regsweep: ./conf", f"file://{own}", anchor="main")


def search_own_conf_first() -> None:
    """Registers OwnConfFirst; called before Hydra builds its search path (finding plugins takes
    Hydra a moment, so not at import)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(OwnConfFirst)  # a second call changes nothing


def sweep_files(folder: str = "") -> dict[str, Path]:
    """Each sweep definition by name (with folder="baselines", each baseline): a file in ./sweeps of
    the working directory comes before regsweep's own file of the same name."""
    found: dict[str, Path] = {}
    for root in (SWEEPS_DIR, Path.cwd() / "sweeps"):  # the later one wins
        found.update((path.stem, path) for path in (root / folder).glob("*.yaml"))
    return dict(sorted(found.items()))


DEFAULT_SWEEP = "regularization"


def compose_study(overrides: list[str]) -> DictConfig:
    """The training config plus one sweep definition under `sweep` (`sweep=<name>` picks it).

    config.yaml stays the primary config, as in `regsweep train`; the sweep group is appended.
    """
    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")), DEFAULT_SWEEP)
    rest = [o for o in overrides if not o.startswith("sweep=")]
    sweeps = sweep_files()
    if choice not in sweeps:
        raise RegsweepError(
            f"sweep={choice} is not a known sweep: choose one of {', '.join(sweeps)}, "
            f"or write sweeps/{choice}.yaml in the working directory"
        )
    load_sweep_file(sweeps[choice])  # its own syntax error, named
    cfg = compose([f"+sweep={choice}", *rest])
    check_study_name(str(cfg.sweep.study))
    return cfg


SAFE_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# SAFE_STUDY_NAME in words, for every sentence that refuses a name.
STUDY_NAME_RULE = (
    "use up to 100 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, such as "
    "sweep.study=my-study (the name becomes file names under the store)"
)


def check_study_name(name: str) -> None:
    """A study's name becomes file names under the store (reports/<name>/, <name>_best.yaml), and
    on a shared storage someone else chooses it: it may not reach outside the store."""
    if not SAFE_STUDY_NAME.fullmatch(name):
        raise RegsweepError(f"sweep.study={name!r} is not a safe study name: {STUDY_NAME_RULE}")


def override_key(override: str) -> str:
    """The key an override sets: `+data.test_dir=x` and `~data.test_dir` both set `data.test_dir`."""
    return override.split("=", 1)[0].lstrip("+~")


def training_overrides(overrides: list[str]) -> list[str]:
    """The overrides that reach every run (the data, the model, where things are): those of a
    `regsweep sweep` or `regsweep report` command line without the study's and Hydra's own."""
    return [o for o in overrides if not o.startswith(("sweep.", "sweep=", "hydra."))]


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else type(error).__name__


def register_sweeps() -> None:
    """Makes each sweeps/<name>.yaml selectable as the config group option `sweep=<name>`."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, path in sweep_files().items():
        try:
            node = load_sweep_file(path)
        except RegsweepError:
            continue  # a broken file stops only the sweep that selects it (see compose_study)
        store.store(group="sweep", name=name, node=node)


def load_sweep_file(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except Exception as error:
        raise RegsweepError(f"{path} is not valid YAML ({_first_line(error)}): fix the file") from None
    if not isinstance(node, DictConfig):
        raise RegsweepError(f"{path} is not a mapping of sweep settings: start from sweeps/{DEFAULT_SWEEP}.yaml")
    return node


def _efficientnet_blocks() -> tuple[str, ...]:
    repeats = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 1}
    return tuple(f"block{stage}{chr(ord('a') + i)}" for stage, n in repeats.items() for i in range(n))


def _resnet50_blocks() -> tuple[str, ...]:
    repeats = {2: 3, 3: 4, 4: 6, 5: 3}
    return tuple(f"conv{stage}_block{i}" for stage, n in repeats.items() for i in range(1, n + 1))


# Each backbone's blocks, bottom to top: `model.unfrozen_blocks=N` fine-tunes the top N. A layer
# belongs to block b if it is named b or b_* (see regsweep.model). Kept here, free of Keras, so
# that validating a config (in the sweep's own process, too) does not import TensorFlow.
BLOCKS: dict[str, tuple[str, ...]] = {
    "demo_cnn": ("block1", "block2", "block3"),
    "vgg16": tuple(f"block{i}" for i in range(1, 6)),
    "mobilenet_v2": tuple(f"block_{i}" for i in range(1, 17)),
    "efficientnet_b0": _efficientnet_blocks(),
    "resnet50": _resnet50_blocks(),
}


def validate(cfg: DictConfig) -> None:
    """Raises RegsweepError naming the first invalid key, its value and the fix."""
    _check_types(cfg)
    model, data, train, optim, augment = cfg.model, cfg.data, cfg.train, cfg.optim, cfg.augment
    if model.backbone not in BLOCKS:
        _fail(f"unknown backbone model.backbone={model.backbone}: choose one of {', '.join(BLOCKS)}")
    blocks = len(BLOCKS[model.backbone])
    _check(0 <= model.dropout < 1, f"model.dropout={model.dropout} is outside [0, 1): use a rate such as 0.5")
    _check(optim.lr > 0, f"optim.lr={optim.lr} must be positive: use a learning rate such as 1e-3")
    _check(
        optim.fine_tune_factor > 0,
        f"optim.fine_tune_factor={optim.fine_tune_factor} must be positive: use a factor such as 0.1",
    )
    _check(
        0 <= augment.strength <= 1,
        f"augment.strength={augment.strength} is outside [0, 1]: 0 turns augmentation off, 1 is the maximum",
    )
    _check(
        isinstance(model.unfrozen_blocks, int) and 0 <= model.unfrozen_blocks <= blocks,
        f"model.unfrozen_blocks={model.unfrozen_blocks} is not possible for {model.backbone}, "
        f"which has {blocks} blocks: use an integer from 0 to {blocks}",
    )
    _check_weights(model.backbone, model.weights)
    _check(
        isinstance(model.image_size, int) and model.image_size >= MIN_IMAGE_SIZE,
        f"model.image_size={model.image_size} is too small: use at least {MIN_IMAGE_SIZE} pixels",
    )
    _check(model.pooling in POOLINGS, f"model.pooling={model.pooling} is unknown: use one of {', '.join(POOLINGS)}")
    _check(model.head_units >= 1, f"model.head_units={model.head_units} must be at least 1")
    _check(data.flip in FLIPS, f"data.flip={data.flip} is unknown: use one of {', '.join(FLIPS)}")
    _check(
        data.on_bad_image in ("error", "skip"),
        f"data.on_bad_image={data.on_bad_image} is unknown: use error (stop at an unreadable file) or skip",
    )
    _check(data.batch_size >= 1, f"data.batch_size={data.batch_size} must be at least 1")
    _check(
        isinstance(data.max_pixels, int) and data.max_pixels >= 1,
        f"data.max_pixels={data.max_pixels} must be a whole number of pixels of at least 1, such as 89478485 "
        "(PIL's limit)",
    )
    _check(
        0 < data.val_fraction < 1 and 0 <= data.test_fraction < 1 and data.val_fraction + data.test_fraction < 1,
        f"data.val_fraction={data.val_fraction} and data.test_fraction={data.test_fraction} must leave "
        "images for training: use fractions such as 0.2 and 0.1",
    )
    _check(
        0 < data.train_fraction <= 1,
        f"data.train_fraction={data.train_fraction} must be in (0, 1]: "
        "the share of training images to use, such as 0.5",
    )
    _check_data_source(data)
    _check(train.epochs >= 1, f"train.epochs={train.epochs} must be at least 1")
    _check(
        model.unfrozen_blocks == 0 or train.fine_tune_epochs >= 1,
        f"model.unfrozen_blocks={model.unfrozen_blocks} needs train.fine_tune_epochs >= 1",
    )
    _check(train.early_stopping_patience >= 0, "train.early_stopping_patience must be 0 or more")
    _check(
        isinstance(cfg.cache.enabled, bool),
        f"cache.enabled={cfg.cache.enabled} is not true or false: choose cache=on or cache=off",
    )
    _check(
        cfg.cache.augmented_views >= 1,
        f"cache.augmented_views={cfg.cache.augmented_views} must be at least 1: "
        "use a few views such as 4, or cache=off for online augmentation",
    )
    _check(
        cfg.tracking.artifacts in ARTIFACTS,
        f"tracking.artifacts={cfg.tracking.artifacts} is unknown: use one of {', '.join(ARTIFACTS)}",
    )
    _check(cfg.cache.max_gb > 0, f"cache.max_gb={cfg.cache.max_gb} must be positive: give a size cap in GB such as 20")
    _check(
        cfg.tracking.connect_timeout > 0,
        f"tracking.connect_timeout={cfg.tracking.connect_timeout} must be positive: give seconds, such as 10",
    )


ARTIFACTS = ("all", "best", "none")
NUMBER_KEYS = (
    "model.dropout",
    "optim.lr",
    "optim.fine_tune_factor",
    "augment.strength",
    "data.val_fraction",
    "data.test_fraction",
    "data.train_fraction",
    "cache.max_gb",
    "tracking.connect_timeout",
)
INTEGER_KEYS = (
    "model.unfrozen_blocks",
    "model.image_size",
    "model.head_units",
    "data.batch_size",
    "train.seed",
    "data.split_seed",
    "train.epochs",
    "train.fine_tune_epochs",
    "train.early_stopping_patience",
    "cache.augmented_views",
)


def _check_types(cfg: DictConfig) -> None:
    for key in NUMBER_KEYS + INTEGER_KEYS:
        value = OmegaConf.select(cfg, key)
        wanted = int if key in INTEGER_KEYS else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            kind = "an integer" if key in INTEGER_KEYS else "a number"
            _fail(f"{key}={value} is not {kind}: give {key}=<{kind.split()[-1]}>")


DATA_SOURCES = {"demo": (), "folders": ("train_dir", "val_dir"), "split": ("dir",)}


def _check_data_source(data: DictConfig) -> None:
    """Each data source uses its own keys; a folder given to the wrong source is an error, not ignored."""
    if data.source not in DATA_SOURCES:
        _fail(f"data.source={data.source} is unknown: choose data=demo, data=folders or data=split")
    for key in DATA_SOURCES[data.source]:
        if OmegaConf.is_missing(data, key) or data[key] is None:
            needed = " and ".join(f"data.{k}=<folder>" for k in DATA_SOURCES[data.source])
            _fail(f"data={data.source} needs {needed}")
    for source, keys in DATA_SOURCES.items():
        stray = [k for k in keys if source != data.source and not OmegaConf.is_missing(data, k) and data[k] is not None]
        if stray:
            _fail(f"data.{stray[0]} is set but data={data.source} is selected: add data={source} to use it")
    if data.source != "folders" and not OmegaConf.is_missing(data, "test_dir") and data.test_dir is not None:
        _fail(f"data.test_dir is set but data={data.source} is selected: add data=folders to use it")


def _check_weights(backbone: str, weights: Any) -> None:
    named = "digits" if backbone == "demo_cnn" else "imagenet"
    if weights is None or weights == named:
        return
    if weights in ("digits", "imagenet"):
        _fail(
            f"model.weights={weights} does not apply to model.backbone={backbone}: "
            f"use {named}, null, or a weights file path (model=<backbone> picks matching defaults)"
        )
    if not Path(str(weights)).expanduser().is_file():
        _fail(f"model.weights={weights} is not a file: give the path of a weights file, {named}, or null")


def _check(ok: bool, message: str) -> None:
    if not ok:
        _fail(message)


def _fail(message: str) -> None:
    raise RegsweepError(message)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@/\s]+)@")


def redact(text: str, hide=lambda password: "***") -> str:
    """Hides the password in URLs such as postgresql://user:secret@host/db: as ***, or as what
    `hide(password)` returns (`regsweep train` hands Hydra an interpolation in its place)."""
    return _URL_PASSWORD.sub(lambda found: f"{found[1]}{hide(found[2])}@", text)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys → strings (MLflow params), with secrets redacted."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = redact(str(node))

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def run_name(cfg: DictConfig, label: str = "") -> str:
    """A readable name from the four knobs, e.g. `#7 do0.50 aug0.50 lr3.2e-04 ub1 demo_cnn`.

    The knobs come first because the MLflow runs table cuts long names; `label` says what the run
    is for (`#7` a trial, `reeval #7 seed 2` a re-evaluation).
    """
    m = cfg.model
    knobs = f"do{m.dropout:.2f} aug{cfg.augment.strength:.2f} lr{cfg.optim.lr:.1e} ub{m.unfrozen_blocks} {m.backbone}"
    return f"{label} {knobs}" if label else knobs
