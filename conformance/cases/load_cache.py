"""Case files loaded once per content: every process of a run (the controller, each worker, each
worker that replaces one) loads the whole corpus, and loading the suite's 9,000 cases costs 0.55 s
of CPU each time (TOML, the schema, every rule the schema cannot state, sweeps expanded), most of a
worker's collection. A file loaded before is read back from a pickle in a tenth of that.

An entry is named by everything its result depends on:
- the file's bytes and where it is (the label its cases and errors carry, the folder its tensor
  files are found in);
- the loader: the bytes of every source and schema file of the `conformance` package (a change
  anywhere makes another loader: nothing says which modules a case's loading reaches), and
  Python's and NumPy's versions, which write and read the pickle;
- the tensors a case reads from files beside its own (.npz): the entry notes their sizes and
  modification times, and is not used once one of them changed.
A file whose loading found an error is not kept: the error may be a tensor file that is missing
now and there later. Entries live in a folder per loader under the run's cache root (beside its
compiled programs: `--conformance-cache`, or with `none` the run's own folder, which the run
removes). A loader's folder unused for `UNUSED_DAYS` is removed when another loader makes its own,
and an entry unused for as long when a process of its loader writes a new one. The root is trusted
as the compilers' is (their entries are machine code that runs): reading an entry unpickles it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from conformance.cases.loading import load_file
from conformance.cases.model import LoadResult

UNUSED_DAYS = 7
_PACKAGE = Path(__file__).resolve().parent.parent  # conformance/
_LOADER_PREFIX = "loader-"

# (path, size, modification time in ns) of each tensor file a file's cases read
TensorFiles = list[tuple[str, int, int]]


def load_file_kept(path: Path, root: Path | None, directory: Path | None) -> LoadResult:
    """`load_file(path, root)`, read from `directory` where it was kept, else loaded and kept there
    (`directory` None: loaded, not kept). What cannot be read or written is loaded as if not kept."""
    if directory is None:
        return load_file(path, root)
    try:
        raw_bytes = path.read_bytes()
    except OSError:
        return load_file(path, root)  # (its error, as the loader words it)
    folder = _loader_folder(directory)
    if folder is None:
        return load_file(path, root, raw_bytes)
    key = hashlib.sha256(f"{path.absolute()}\0{root.absolute() if root else ''}\0".encode() + raw_bytes)
    entry = folder / f"{key.hexdigest()[:40]}.pickle"
    kept = _read(entry)
    if kept is not None:
        return kept
    loaded = load_file(path, root, raw_bytes)
    if not loaded.errors:
        _write(entry, loaded)
        _remove_unused_entries(folder)
    return loaded


def _read(entry: Path) -> LoadResult | None:
    try:
        tensors, loaded = pickle.loads(entry.read_bytes())
    except Exception:  # (none yet; or a torn or foreign file: loaded again, and written over)
        return None
    if not isinstance(loaded, LoadResult) or tensors != _tensor_files(loaded):
        return None
    with contextlib.suppress(OSError):
        os.utime(entry)  # (used: `_remove_unused_entries` keeps it)
    return loaded


def _write(entry: Path, loaded: LoadResult) -> None:
    """Written whole or not at all: another process may read it at any moment, or write it too."""
    try:
        data = pickle.dumps((_tensor_files(loaded), loaded), protocol=pickle.HIGHEST_PROTOCOL)
        handle, temporary = tempfile.mkstemp(dir=entry.parent, prefix=".", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, entry)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except (OSError, pickle.PicklingError):
        pass  # (a full or read-only cache: the next run loads it again)


def _tensor_files(loaded: LoadResult) -> TensorFiles:
    """The tensor files the cases read, as they are now (a missing one: size and time -1)."""
    specs = [spec for case in loaded.cases for spec in (case.input_spec, case.kernel_spec)]
    named = sorted({spec["file"] for spec in specs if "file" in spec})
    found: TensorFiles = []
    for name in named:
        try:
            stat = os.stat(name)
            found.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            found.append((name, -1, -1))
    return found


@functools.cache  # (once per process and cache root)
def _loader_folder(directory: Path) -> Path | None:
    """This loader's folder under `directory`, made if missing (and the folders of loaders unused for
    `UNUSED_DAYS` removed then), marked as used now; None if it cannot be made."""
    folder = directory / f"{_LOADER_PREFIX}{loader_digest()}"
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            _remove_unused(directory, keep=folder)
        os.utime(folder)
    except OSError:
        return None
    return folder


def _remove_unused(directory: Path, keep: Path) -> None:
    """The other loaders' folders unused for `UNUSED_DAYS`."""
    for other in directory.glob(f"{_LOADER_PREFIX}*"):
        if other != keep and _unused(other):
            shutil.rmtree(other, ignore_errors=True)


@functools.cache  # (once per process: after its first new entry)
def _remove_unused_entries(folder: Path) -> None:
    """This loader's entries unused for `UNUSED_DAYS`: files since changed or gone (a test's own
    corpus in a temporary folder) are never read again."""
    for entry in folder.glob("*.pickle"):
        if _unused(entry):
            entry.unlink(missing_ok=True)


def _unused(path: Path) -> bool:
    try:
        return path.stat().st_mtime < time.time() - UNUSED_DAYS * 86400
    except OSError:
        return False


@functools.cache
def loader_digest() -> str:
    """What names this loader (`digest_of` the installed package)."""
    return digest_of(_PACKAGE)


def digest_of(package: Path) -> str:
    """The package's source and schema files, with Python's and NumPy's versions."""
    digest = hashlib.sha256(f"{sys.version}\0{np.__version__}\0".encode())
    for source in sorted([*package.rglob("*.py"), *package.rglob("*.json")]):
        digest.update(f"{source.relative_to(package)}\0".encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:24]
