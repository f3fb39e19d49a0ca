"""Atomic writes and the other small file helpers every stage shares.

Every artifact is written to a temporary file in the destination directory, flushed,
fsynced and moved into place with :func:`os.replace`, so a killed process never leaves
a half-written file under the final name. Also here, one copy each: the JSON sanitiser
(:func:`to_jsonable`), the YAML reader (:func:`load_yaml`) and the lock that keeps a
second process out of an output directory (:class:`RunLock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from ncood.errors import ConfigError, NcoodError

try:
    import fcntl
except ImportError:  # not POSIX: RunLock falls back to an exclusive-create pid file
    fcntl = None

_UMASK = os.umask(0o022)  # read the process umask once (os.umask can only set it) ...
os.umask(_UMASK)  # ... and restore it


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit move it onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file open()'s usual mode
    except OSError as exc:
        raise NcoodError(
            f"cannot write {str(path)!r}: {exc.strerror}; choose a writable output directory"
        ) from exc
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are shared files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, standard JSON (see :func:`to_jsonable`), atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: the one sanitiser of the package.

    Mappings become dicts with ``str`` keys, tuples/lists/arrays become lists, numpy
    scalars become Python numbers, paths become strings, and non-finite floats (NaN,
    +-inf) become ``None``, so the output is standard JSON (``allow_nan=False``) that any
    reader, a browser's ``JSON.parse`` included, accepts.

    Raises:
        TypeError: an object with no JSON form (names its type).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int):  # bool is an int
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def load_yaml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping (an empty file is ``{}``).

    Raises:
        ConfigError: a missing file, invalid YAML, or a document that is not a mapping.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist; check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{what} {str(path)!r} must hold a mapping (key: value lines); "
            f"got a {type(doc).__name__}"
        )
    return doc


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` atomically."""
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class RunLock:
    """An exclusive lock on an output directory: a second process writing it is refused.

    The lock is ``directory/.lock``, held with a POSIX advisory ``flock`` (released by the
    kernel even when the holder is killed, so a dead run never blocks the next one) and
    holding the holder's pid. The file is removed when the lock is released, whether the
    run finished or failed; a ``.lock`` left by a killed process is not locked and is
    taken over. Without ``fcntl`` (not POSIX) the file is created exclusively instead,
    and a file naming a dead pid is taken over.

    Args:
        directory: the output directory (created).
        fix: the advice that ends the refusal message.

    Raises:
        ConfigError: on ``__enter__``, when another process (or another ``RunLock`` in
            this process) holds the directory.
    """

    def __init__(
        self, directory: str | os.PathLike, *, fix: str = "choose another output directory"
    ) -> None:
        self.path = Path(directory) / ".lock"
        self.fix = fix
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NcoodError(
                f"cannot create {str(self.path.parent)!r}: {exc.strerror}; {self.fix}"
            ) from None
        for _ in range(10):  # retried only when the file was replaced while we locked it
            fd = self._open()
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return self
        raise ConfigError(f"cannot take the lock {str(self.path)!r}; {self.fix}")

    def _open(self) -> int | None:
        if fcntl is None:
            try:
                return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _pid_alive(self.path):
                    self.path.unlink(missing_ok=True)
                    return None
                self._refuse()
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse()
        try:
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and removed) it between our open and flock
            os.close(fd)
            return None
        return fd

    def _refuse(self) -> None:
        holder = "another process"
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.path.read_text().strip())
            holder = "this process" if pid == os.getpid() else f"process {pid}"
        raise ConfigError(
            f"another ncood run is writing {str(self.path.parent)!r} ({holder} holds "
            f"{str(self.path)!r}); wait for it to finish or {self.fix}"
        )

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: no one locks a removed file
            os.close(self._fd)
            self._fd = None


def _pid_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- safe names
# Characters kept in file names: letters, digits and ``. _ - + [ ] ,`` (safe on POSIX,
# macOS and Windows; ``[0-5]``-style class subsets keep their names). Everything else,
# path separators and ``:`` included, becomes ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\[\],-]+")
SAFE_NAME_MAX = 100


def safe_name(text: str) -> str:
    """A file name made from ``text`` that cannot leave the directory it is joined to.

    Runs of characters other than letters, digits and ``._-+[],`` become one ``_``;
    leading dots, dashes and underscores are dropped (no hidden files, no ``..``, nothing
    that reads as an option); an empty result is ``"unnamed"``; names longer than 100
    characters keep their first 91 and end with 8 hex digits of the text's SHA-256.
    ``safe_name("faces") == "faces"``, ``safe_name("folder:../../x") == "folder_x"``.

    Args:
        text: any name (an OOD set's name or spec, a regime, a detector).

    Returns:
        A non-empty name without ``/``, ``\\``, ``:`` or a leading ``.``.
    """
    name = _UNSAFE.sub("_", str(text))
    name = re.sub(r"\.{2,}", "_", name)  # no ".." anywhere, even mid-name
    name = re.sub(r"_{2,}", "_", name).lstrip("._-").rstrip("_")
    if not name:
        return "unnamed"
    if len(name) > SAFE_NAME_MAX:
        digest = hashlib.sha256(str(text).encode()).hexdigest()[:8]
        name = f"{name[: SAFE_NAME_MAX - 9]}-{digest}"
    return name


def safe_names(names: Iterable[str], what: str = "OOD set") -> dict[str, str]:
    """``{name: safe_name(name)}``; two names with the same file name are an error.

    Raises:
        ConfigError: two names map to one file name (names both, and the fix).
    """
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in names:
        safe = safe_name(name)
        if safe in seen and seen[safe] != name:
            raise ConfigError(
                f"the {what} names {seen[safe]!r} and {name!r} both become the file name "
                f"{safe!r}; give them distinct names, e.g. NAME=SPEC"
            )
        seen[safe] = name
        out[name] = safe
    return out


def inside(out_dir: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (relative paths are taken relative to ``out_dir``) lies inside
    ``out_dir`` once ``..`` and symbolic links are resolved; ``out_dir`` itself counts."""
    root = Path(out_dir).resolve()
    target = (root / Path(path)).resolve()  # an absolute ``path`` replaces ``root`` here
    return target == root or root in target.parents


def safe_path(out_dir: str | os.PathLike, *names: str) -> Path:
    """``out_dir / safe_name(n1) / safe_name(n2) ...``, checked to stay inside ``out_dir``.

    Raises:
        ConfigError: the path would leave ``out_dir`` (possible only through a symbolic
            link inside it).
    """
    path = Path(out_dir).joinpath(*(safe_name(n) for n in names))
    if not inside(out_dir, path):
        raise ConfigError(
            f"refusing to write {str(path)!r}: it resolves outside the output directory "
            f"{str(out_dir)!r} (a symbolic link?); choose another output directory"
        )
    return path


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "img") -> Any:
    """A tqdm bar on stderr for long work; silent when ``enabled`` is false or stderr is
    not a terminal (logs and pipes get the summary lines, not bar redraws). The bar is
    removed when closed."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        leave=False,
    )
