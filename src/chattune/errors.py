"""The error boundary: what bad input raises becomes one located line (the CLI then exits 2).

chattune's own user errors (a bad config value, data, template, model source, run dir, full disk)
keep their message, joined into one line. An OSError of the kinds bad input causes (a path that
is not a folder or is one, no permission, a read-only file system, no space, nothing there) is said
as "PATH: what is wrong". A library's value-range error (numpy's seed range and the like) is kept
as its message. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools

# errno -> what it means for the person who gave the path
OS_REASONS = {
    errno.ENOTDIR: "a file where a folder is needed (not a directory)",
    errno.EISDIR: "a folder where a file is needed (is a directory)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
}
# words of the value-range errors libraries raise for values chattune passes on from its input
RANGE_WORDS = ("must be between", "out of range", "out of bounds", "too large to convert",
               "must be non-negative")


class InputError(ValueError):
    """Bad input found outside the config's schema: a path, a permission, a disk, a value range."""


def user_errors() -> tuple[type[BaseException], ...]:
    """chattune's own errors for bad input: their message is the whole story."""
    from chattune.config import ConfigError
    from chattune.data.formats import DataError
    from chattune.data.templates import TemplateError
    from chattune.io import DiskFull
    from chattune.models import ModelSourceError
    from chattune.rundir import RunDirError
    from chattune.training.callbacks import TrainingDiverged

    return (ConfigError, DataError, TemplateError, ModelSourceError, RunDirError, DiskFull,
            FileExistsError, TrainingDiverged, InputError)


CAUGHT = (Exception,)  # what the boundary looks at; one_line() decides, the rest is raised again


def one_line(err: BaseException) -> str | None:
    """The one located line for `err`, or None when it is not bad input (a bug: re-raise it)."""
    if isinstance(err, user_errors()):
        return _joined(str(err))
    if isinstance(err, OSError) and err.errno in OS_REASONS:
        where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{where or 'a path'}: {OS_REASONS[err.errno]}"
    ranged = any(word in str(err).lower() for word in RANGE_WORDS)
    if isinstance(err, (ValueError, OverflowError)) and ranged:
        return _joined(f"a value out of range: {err}")
    return None


def _joined(message: str) -> str:
    """A message of several lines ("SOURCE: invalid configuration", "  - KEY: ...") as one line."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    head, rest = lines[0].rstrip(":"), lines[1:]
    return f"{head}: {'; '.join(rest)}"


def located(function):
    """The Python API's boundary: bad-input errors that are not chattune's own become InputError
    (one located line; the original stays as __cause__); chattune's own and bugs pass unchanged."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except CAUGHT as err:
            if isinstance(err, user_errors()) or (message := one_line(err)) is None:
                raise
            raise InputError(message) from err
    return wrapper
