"""The frozen-prefix feature cache's store: run the frozen part of the backbone once per sweep.

With `model.unfrozen_blocks=N` the backbone splits at a block boundary into a frozen prefix
and a trainable suffix (a single tensor crosses the cut). The prefix's outputs never change
during training, so they are computed once, stored under `<store>/cache/features/`, and
reused by every later trial, epoch, re-run and local worker that needs the same numbers.

An entry is a folder holding `features.npy` (float32, memory-mapped when read, so a trial
streams it from disk instead of holding it in memory), `labels.npy` and `meta.json` (what
went into the key, shapes and checksums). Its name is a hash of everything that changes the
numbers: backbone, weights (hashed from the loaded values), cut, input size, preprocessing,
library versions, the split's content fingerprint, and the augmented view (strength, ranges,
flip, seed, index). Change any of them and the entry is a miss, never silently reused.

Online augmentation would make every epoch's prefix output new. Instead a trial trains on
`cache.augmented_views` = K augmented views per training image at its strength, computed
once and cycled over epochs (epoch e reads view e mod K). `cache=off` trains online, exactly.
What goes into a key, the filling and the datasets read from entries are `regsweep.fit`'s
cached strategy; this module keeps the entries.

Entries are written into a staging folder and renamed into place, so no reader ever sees a
half-written one; a per-entry file lock stops two local workers computing the same entry
twice; each entry is checked against its checksums the first time a process reads it, and a
damaged one is replaced. Least-recently-used entries are evicted above `cache.max_gb`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from regsweep.files import file_lock, publish_folder

FORMAT = 2  # 2: phase 1 entries hold pooled vectors
FEATURES = "features.npy"
LABELS = "labels.npy"
META = "meta.json"


# --- the entry store --------------------------------------------------------------------------


class CacheDamaged(Exception):
    """An entry's files do not match its meta.json (truncated, edited or half-copied)."""


@dataclass
class Entry:
    path: Path
    features: np.ndarray  # memory-mapped, read-only
    labels: np.ndarray
    hit: bool


def entry_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class FeatureStore:
    """A folder of immutable entries, filled atomically and evicted least recently used first."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.entries = self.root / "features"

    def get(self, parts: dict, label: str, fill: Callable[[Path], None]) -> Entry:
        """The entry for `parts`, computed by `fill(staging_folder)` on a miss.

        `fill` writes FEATURES and LABELS into the staging folder; the store adds the checksums
        and publishes the folder with one rename.
        """
        return self.get_many([(parts, label)], lambda folders: fill(folders[0]))[0]

    def get_many(self, requests: list[tuple[dict, str]], fill: Callable[[dict[int, Path]], None]) -> list[Entry]:
        """The entries for several (parts, label) requests; the missing ones filled by one call.

        One pass of the images through the backbone yields every cut above the first one, so
        a run asks for all its cuts of one view together. `fill({request index: staging
        folder})` writes only the missing ones. Locks are taken in name order, so two workers
        asking for overlapping sets cannot deadlock.
        """
        names = [f"{label}-{entry_key(parts)}" for parts, label in requests]
        entries = [self._open(self.entries / name) for name in names]
        if all(entries):
            return entries
        self.entries.mkdir(parents=True, exist_ok=True)
        with ExitStack() as locks:
            for name in sorted({names[i] for i, entry in enumerate(entries) if entry is None}):
                locks.enter_context(self._lock(name))
            stagings = {}
            for i, name in enumerate(names):
                if entries[i] is None:
                    entries[i] = self._open(self.entries / name)  # another worker may have filled it
                if entries[i] is None and i not in stagings:
                    if (self.entries / name).exists():  # a folder without a valid meta.json: not ours to trust
                        self.remove(self.entries / name)
                    for leftover in self.entries.glob(f".staging-{name}-*"):  # a killed filler's: we hold its lock
                        shutil.rmtree(leftover, ignore_errors=True)
                    stagings[i] = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.entries))
            if stagings:
                try:
                    fill(stagings)
                    for i, staging in stagings.items():
                        _write_meta(staging, requests[i][0])
                except BaseException:
                    for staging in stagings.values():
                        shutil.rmtree(staging, ignore_errors=True)
                    raise
                for i, staging in stagings.items():
                    # If a worker without our lock won the race, keep theirs.
                    publish_folder(staging, self.entries / names[i])
        self.evict(keep={self.entries / name for name in names})
        for i in stagings:
            entries[i] = self._open(self.entries / names[i])
            entries[i].hit = False
        return entries

    def _open(self, path: Path) -> Entry | None:
        if not (path / META).is_file():
            return None
        try:
            features, labels = _verified_arrays(path)
        except CacheDamaged:
            self.remove(path)
            return None
        os.utime(path)  # last used, for eviction
        return Entry(path, features, labels, hit=True)

    def _lock(self, name: str):
        return file_lock(self.root / "locks" / f"{name}.lock")

    def listing(self) -> list[dict]:
        """Published entries, least recently used first, with their size and meta."""
        rows = []
        if not self.entries.is_dir():
            return rows
        for path in self.entries.iterdir():
            if path.name.startswith(".") or not (path / META).is_file():
                continue
            try:
                meta = json.loads((path / META).read_text())
                rows.append(
                    {"path": path, "bytes": _folder_bytes(path), "last_used": path.stat().st_mtime, "meta": meta}
                )
            except (OSError, ValueError):
                rows.append({"path": path, "bytes": _folder_bytes(path), "last_used": 0.0, "meta": {}})
        return sorted(rows, key=lambda row: row["last_used"])

    def evict(self, keep: set[Path] = frozenset()) -> list[Path]:
        """Removes least-recently-used entries until the total fits the cap."""
        rows = self.listing()
        total = sum(row["bytes"] for row in rows)
        removed = []
        for row in rows:
            if total <= self.max_bytes:
                break
            if row["path"] in keep:
                continue
            self.remove(row["path"])
            total -= row["bytes"]
            removed.append(row["path"])
        return removed

    def remove(self, path: Path) -> None:
        """Renames the entry out of sight first, so a reader sees it whole or not at all.

        A process already reading it keeps its memory map: Linux frees the file only then.
        """
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def clear(self) -> int:
        rows = self.listing()
        for row in rows:
            self.remove(row["path"])
        for leftover in self.entries.glob(".*") if self.entries.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)  # staging folders of killed workers
        return len(rows)


def _write_meta(folder: Path, parts: dict) -> None:
    features = np.load(folder / FEATURES, mmap_mode="r")
    meta = {
        "format": FORMAT,
        "key": parts,
        "shape": list(features.shape),
        "dtype": str(features.dtype),
        "files": {
            name: {"bytes": (folder / name).stat().st_size, "sha256": _file_sha256(folder / name)}
            for name in (FEATURES, LABELS)
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(folder / META, "w") as handle:
        json.dump(meta, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


_VERIFIED: set[tuple] = set()


def _verified_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The entry's arrays, after checking sizes always and checksums once per process."""
    try:
        meta = json.loads((path / META).read_text())
        files = meta["files"]
        stats = {name: (path / name).stat() for name in files}
        if any(stats[name].st_size != files[name]["bytes"] for name in files):
            raise CacheDamaged(f"{path}: a file has the wrong size")
        identity = (str(path), *((stats[n].st_ino, stats[n].st_mtime_ns) for n in sorted(files)))
        if identity not in _VERIFIED:
            if any(_file_sha256(path / name) != files[name]["sha256"] for name in files):
                raise CacheDamaged(f"{path}: a checksum does not match")
            _VERIFIED.add(identity)
        features = np.load(path / FEATURES, mmap_mode="r")
        labels = np.load(path / LABELS)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheDamaged(f"{path}: {error}") from error
    if list(features.shape) != meta["shape"] or len(labels) != features.shape[0]:
        raise CacheDamaged(f"{path}: shapes disagree with meta.json")
    return features, labels


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def store_for(cfg: DictConfig) -> FeatureStore:
    return FeatureStore(Path(cfg.cache.dir), int(float(cfg.cache.max_gb) * 1e9))


def info(store: FeatureStore) -> str:
    """`regsweep cache info`: the folder, its cap, and every entry, least recently used first."""
    rows = store.listing()
    total = sum(row["bytes"] for row in rows)
    cap = _size(store.max_bytes)
    lines = [f"Feature cache {store.entries}: {len(rows)} entries, {_size(total)} of {cap} (cache.max_gb)"]
    for row in rows:
        key = row["meta"].get("key", {})
        shape = "x".join(str(d) for d in row["meta"].get("shape", [])) or "?"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        size, data = _size(row["bytes"]), key.get("data", "?")
        lines.append(f"  {row['path'].name}  {shape}  {size}  last used {used}  data {data}")
    return "\n".join(lines)


def clear(store: FeatureStore) -> str:
    """`regsweep cache clear`: every entry goes; the next trials recompute what they need."""
    rows = store.listing()
    store.clear()
    return f"Removed {len(rows)} entries ({_size(sum(r['bytes'] for r in rows))}) from {store.entries}"


def _size(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"
