"""Writing files so that a reader never sees half of one, with the permissions any new file of the process gets."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; when the block ends, the file is flushed to disk and renamed
    over ``path``; when it raises, the temporary file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    staged = Path(temporary)
    try:
        yield staged
        with open(staged, "rb") as written:
            os.fsync(written.fileno())
        shareable(staged)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def shareable(path: Path) -> None:
    """Give a temporary file or folder, before it is renamed into place, the permissions any new one of this
    process gets: mkstemp and mkdtemp make them owner-only, which would lock others out of a shared cache."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
