"""The temp directories a save writes into, and the removal of those an interrupted save left.

``save`` writes a checkpoint into ``.NAME.tmp-XXXXXXXX`` next to the target and renames it into
place. A save killed before the rename (SIGKILL, OOM killer, power loss) leaves that directory
behind, as large as the checkpoint, and nothing else would ever remove it. So a save holds an
exclusive ``flock`` on its temp directory for as long as it runs; the kernel drops the lock when
the process dies, however it dies. A later save or load of the same target removes every temp
directory of that target whose lock it can take: no live process owns those.

flock is per open file description, so a save running in another thread of the same process is
seen as live too. Where flock is missing (Windows), nothing is ever removed. A temp directory made
by a slimrt from before this lock was added is never locked, so it counts as stale: running such a
version's save of the same target at the same time is not supported.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

try:
    import fcntl
except ImportError:  # Windows: no flock; stale directories are then left alone
    fcntl = None

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_SUFFIX = r"[a-z0-9_]{8}"  # tempfile.mkdtemp's random part


def tmp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}.tmp-"


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another open description holds the lock; None: no flock on this filesystem."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ...: some network and FUSE filesystems
        return None


def claim(target: str) -> tuple[str, int | None]:
    """A new temp directory next to ``target``, and the descriptor whose flock marks it as owned by
    this process (None without flock); close the descriptor once the directory is renamed or removed."""
    parent = os.path.dirname(target)
    for _ in range(100):
        tmp = tempfile.mkdtemp(prefix=tmp_prefix(target), dir=parent)
        if fcntl is None:
            return tmp, None
        fd = os.open(tmp, _O_DIR)
        locked = _try_lock(fd)
        if locked is None:  # unowned, and a sweep cannot lock it either: it is left alone
            os.close(fd)
            return tmp, None
        # A concurrent sweep may have taken the directory between mkdtemp and the lock: then it is
        # gone (or going), and this save takes another one.
        try:
            ok = locked and os.path.samestat(os.fstat(fd), os.lstat(tmp))
        except FileNotFoundError:
            ok = False
        if ok:
            return tmp, fd
        os.close(fd)
    raise OSError(f"save: could not create a temp directory next to {target} that stays in place")


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def sweep(target: str) -> list[str]:
    """Removes the temp directories of interrupted saves of ``target`` that no live process owns;
    returns their paths. Best effort: anything it cannot open, lock or remove is left as it is."""
    if fcntl is None:
        return []
    parent = os.path.dirname(target) or "."
    pattern = re.compile(re.escape(tmp_prefix(target)) + _SUFFIX)
    removed = []
    try:
        with os.scandir(parent) as entries:
            candidates = [e.path for e in entries
                          if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []
    for path in candidates:
        try:
            fd = os.open(path, _O_DIR)
        except OSError:
            continue
        try:
            # Removed while locked, so no save can claim it meanwhile; samestat: still the directory
            # that was opened (not one renamed into its place since).
            if _try_lock(fd) and os.path.samestat(os.fstat(fd), os.lstat(path)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
