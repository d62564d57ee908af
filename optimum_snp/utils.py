"""Small helpers shared by the steps that write folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_directory(target: str | os.PathLike, prefix: str = ".snp-tmp-") -> Iterator[str]:
    """Yields an empty temporary folder beside `target`. When the block succeeds the folder becomes `target` (an
    existing `target` is moved aside first and deleted after); on any error it is removed, so `target` is either
    the old folder or the complete new one, never a half-written one."""
    target = os.path.realpath(os.fspath(target))
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.isdir(target):
            trash = tempfile.mkdtemp(prefix=".snp-old-", dir=parent)
            os.replace(target, os.path.join(trash, "old"))
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_directory"]
