"""Atomic file writes: the project's one way to write a file that must never be half-written.

Standard library only, so the scanner-side runtime, the data modules and the callbacks share it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    If the block raises (or the process dies), ``path`` keeps its old content or stays absent and
    the temporary file is removed. The new file gets the usual permissions (umask), not the 0600
    of ``mkstemp``; missing parent folders are created.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "split.json"
        >>> with atomic_write(target) as tmp:
        ...     _ = tmp.write_text("{}")
        >>> target.read_text()
        '{}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
