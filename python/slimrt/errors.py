"""Exception types slimrt raises for problems users can act on.

Each one carries a one-sentence message naming the file, tensor, argument or field at fault.
They subclass the builtin a caller would already catch (ValueError, FileExistsError), so code
written against plain Python keeps working.
"""

from __future__ import annotations


class SlimrtError(Exception):
    """Base class of every slimrt-specific error."""


class CheckpointError(SlimrtError, ValueError):
    """A checkpoint is missing, malformed, corrupt, hostile or incompatible with this slimrt."""


class CheckpointExistsError(SlimrtError, FileExistsError):
    """``save`` was asked to write where a checkpoint already exists and ``overwrite`` is False."""


__all__ = ["SlimrtError", "CheckpointError", "CheckpointExistsError"]
