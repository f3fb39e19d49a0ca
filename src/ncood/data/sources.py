"""Where datasets are looked for, the torchvision download fallback, and the decode cache.

Resolution order (offline first), for every on-disk dataset:

1. the ``root`` argument, when given;
2. each directory in the environment variable ``NCOOD_DATA_ROOT`` (``os.pathsep``
   separated);
3. ``~/.cache/ncood``;
4. the system directory ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist``
   installs ``/usr/share/datasets/fashion-mnist``);
5. a torchvision download into ``root`` (or ``~/.cache/ncood``), only if nothing was
   found, downloads are allowed, and a network answers.

Inside each root a dataset looks in a few conventional sub-directories (e.g.
``fashion-mnist/``, ``FashionMNIST/raw/`` and the root itself). A dataset that is
nowhere raises one :class:`~ncood.errors.DataError` listing every directory looked in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ncood.errors import DataError

logger = logging.getLogger(__name__)

ENV_ROOT = "NCOOD_DATA_ROOT"
ENV_OFFLINE = "NCOOD_OFFLINE"

# System-wide copies (Debian packages install under /usr/share/datasets/<name>); a
# dataset may name its own system root here. Module-level so tests can redirect them.
SYSTEM_ROOTS: dict[str, Path] = {}
DEFAULT_SYSTEM_ROOT = Path("/usr/share/datasets")

# Seconds a single network operation may block during a download attempt, so that an
# offline machine with a black-holing firewall fails in seconds rather than hanging.
DOWNLOAD_TIMEOUT_S = 30.0


def cache_root() -> Path:
    """``~/.cache/ncood`` (expanded at call time)."""
    return Path(os.path.expanduser("~")) / ".cache" / "ncood"


def base_name(name: str) -> str:
    """``"cifar10[0,2]" -> "cifar10"``; the alias ``dtd`` -> ``textures``."""
    base = re.sub(r"\[[^\[\]]*\]$", "", name.strip())
    return "textures" if base == "dtd" else base


def resolve_root(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Candidate root directories for dataset ``name``, in the order they are searched.

    Args:
        name: a registered dataset name (a class-subset suffix is ignored).
        root: an explicit root, searched first.

    Returns:
        Distinct directories (existing or not): ``root``, each ``$NCOOD_DATA_ROOT``
        entry, ``~/.cache/ncood``, the system directory.
    """
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root).expanduser())
    env = os.environ.get(ENV_ROOT, "")
    candidates += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    candidates.append(cache_root())
    candidates.append(SYSTEM_ROOTS.get(base_name(name), DEFAULT_SYSTEM_ROOT))
    seen: set[str] = set()
    unique = []
    for path in candidates:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def find_dir(
    name: str,
    root: str | os.PathLike | None,
    layouts: Iterable[str],
    accept: Callable[[Path], bool],
) -> tuple[Path | None, list[Path]]:
    """First ``candidate_root / layout`` that ``accept`` takes.

    Returns:
        ``(directory or None, every directory looked in, in order)``.
    """
    looked: list[Path] = []
    layouts = list(layouts)
    for base in resolve_root(name, root):
        for layout in layouts:
            d = base / layout if layout != "." else base
            looked.append(d)
            if d.is_dir() and accept(d):
                return d, looked
    return None, looked


def downloads_allowed(download: bool) -> bool:
    """False when ``download`` is False or ``$NCOOD_OFFLINE`` is set to a true value."""
    return download and os.environ.get(ENV_OFFLINE, "").lower() not in ("1", "true", "yes")


def torchvision_download(dataset: str, dest: Path, split: str) -> None:
    """Download ``dataset`` with torchvision into ``dest`` (torchvision's own layout).

    Raises:
        DataError: the download failed (no network, a server error, a full disk).
    """
    import torchvision.datasets as tvd  # only when downloading (imports all of them)

    makers: dict[str, Callable[[], Any]] = {
        "fashion_mnist": lambda: tvd.FashionMNIST(str(dest), train=split == "train", download=True),
        "cifar10": lambda: tvd.CIFAR10(str(dest), train=split == "train", download=True),
        "cifar100": lambda: tvd.CIFAR100(str(dest), train=split == "train", download=True),
        "svhn": lambda: tvd.SVHN(str(dest / "svhn"), split=split, download=True),
        "textures": lambda: tvd.DTD(str(dest), split=split, download=True),
    }
    logger.info("downloading %s (%s) with torchvision into %s", dataset, split, dest)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        makers[dataset]()
    except Exception as exc:  # URLError, RuntimeError, OSError, md5 mismatch, ...
        msg = " ".join(str(exc).split())
        raise DataError(f"torchvision download of {dataset} failed: {msg[:300]}") from exc
    finally:
        socket.setdefaulttimeout(old_timeout)


def locate_or_download(
    name: str,
    split: str,
    root: str | os.PathLike | None,
    layouts: Iterable[str],
    accept: Callable[[Path], bool],
    *,
    download: bool,
    how_to_get: str,
    on_missing: Callable[[str], Any] | None = None,
) -> Path | Any:
    """Find a dataset directory, else download it, else fail with one clear error.

    Args:
        name: dataset name (registry name).
        split: the split that must be present.
        root: explicit root or None.
        layouts: sub-directories tried inside each candidate root.
        accept: whether a directory holds the split.
        download: try torchvision when nothing is found.
        how_to_get: the fix, for the error message.
        on_missing: called with the error text instead of raising (the bundled
            Fashion-MNIST subset); its return value is returned.

    Returns:
        The directory found (or ``on_missing``'s value).
    """
    layouts = list(layouts)
    found, looked = find_dir(name, root, layouts, accept)
    if found is not None:
        logger.info("%s/%s: reading from %s", name, split, found)
        return found
    logger.info(
        "%s/%s: not found in %s", name, split, ", ".join(str(p) for p in looked) or "(nowhere)"
    )
    if downloads_allowed(download):
        dest = Path(root).expanduser() if root is not None else cache_root()
        try:
            torchvision_download(name, dest, split)
        except DataError as exc:
            download_note = f"{exc}"
        else:
            again, _ = find_dir(name, dest, layouts, accept)
            if again is not None:
                logger.info("%s/%s: downloaded, reading from %s", name, split, again)
                return again
            download_note = f"torchvision download finished but no usable copy under {dest}"
    elif not download:
        download_note = "downloads disabled (download=False)"
    else:
        download_note = f"downloads disabled (${ENV_OFFLINE} is set)"
    places = "; ".join(str(p) for p in looked)
    message = (
        f"dataset {name!r} (split {split!r}) was not found. Looked in: {places}. "
        f"{download_note}. Fix: {how_to_get}"
    )
    if on_missing is not None:
        return on_missing(message)
    raise DataError(message)


# --------------------------------------------------------------------------- cache

# Decoded datasets, keyed by the files read (path, size, mtime) and the decode options,
# so a repeated load is a dict lookup and a replaced file is decoded again.
_DECODED: dict[tuple, Any] = {}


def file_key(paths: Iterable[Path]) -> tuple:
    """Identity of a set of files: (absolute path, size, mtime_ns) each."""
    key = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            key.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
            continue
        key.append((os.path.abspath(p), -1, -1))
    return tuple(key)


def cached(key: tuple, decode: Callable[[], Any]) -> Any:
    """Return ``_DECODED[key]``, decoding (and storing) it on the first call."""
    if key not in _DECODED:
        _DECODED[key] = decode()
    else:
        logger.debug("decode cache hit: %s", key[:1])
    return _DECODED[key]


def clear_cache() -> None:
    """Forget every decoded dataset (frees memory; the next load decodes again)."""
    _DECODED.clear()
