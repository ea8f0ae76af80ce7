"""The value files of the disk tier: paths derived from keys, crash-safe writes, refusing reads, scans, deletes.

Layout under a cache directory: ``v/<2 hex>/<40 hex>.bakv``, one file per entry, named by :func:`value_digest`
of the flat key (``CacheKey.as_str()``); temporary files are ``<digest>.<pid>.<random>.tmp`` beside it.

Contract (the disk tier, :mod:`block_attention.store.disk`, composes this with its index):

* **Paths come from keys, never from stored data.** Every path is derived here from a digest; directories are
  opened without following links (``O_NOFOLLOW``), files relative to directory descriptors.
* :meth:`ValueFiles.read` returns exactly ``size`` bytes of a regular file, or raises :class:`RefusedFile` for
  anything that must not be read (a link, FIFO, device, directory, a file of another size; a refused non-file is
  unlinked without being followed), ``FileNotFoundError`` when there is none, another ``OSError`` on I/O errors.
* :func:`write_file` writes and fsyncs a new file (``O_EXCL``); the caller renames it into place.
* :meth:`ValueFiles.scan` lists ``digest -> size`` of every value file and removes, on the way, temporary files of
  dead writers (or older than an hour) and foreign entries (links, FIFOs, stray files); nothing is removed
  recursively and nothing outside the directory is touched.
* Deletes are best effort and never follow a link.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from block_attention.store.keys import CacheKey

logger = logging.getLogger("block_attention.store")

VALUE_DIR = "v"
VALUE_SUFFIX = ".bakv"
_VALUE_NAME = re.compile(r"^[0-9a-f]{40}\.bakv$")
TMP_NAME = re.compile(r"^([0-9a-f]{40})\.(\d+)\.[0-9a-f]+\.tmp$")
_TMP_MAX_AGE_S = 3600.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class RefusedFile(Exception):
    """A value file that must not be read (not a regular file, wrong size, a link)."""


def value_digest(skey: str) -> str:
    """The 40-hex digest naming the value file of a flat cache key (``CacheKey.as_str()``)."""
    return hashlib.blake2b(skey.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def value_relpath(key: CacheKey) -> str:
    """Path of ``key``'s value file relative to the cache directory (``v/<2 hex>/<digest>.bakv``)."""
    digest = value_digest(key.as_str())
    return os.path.join(VALUE_DIR, digest[:2], digest + VALUE_SUFFIX)


def temp_name(digest: str) -> str:
    """A fresh temporary file name for ``digest`` (``<digest>.<pid>.<random>.tmp``)."""
    return f"{digest}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


class ValueFiles:
    """The value files under one cache directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @contextmanager
    def subdir(self, digest: str, create: bool = False) -> Iterator[int]:
        """A descriptor of ``<dir>/v/<digest[:2]>``, reached without following any link."""
        root = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            if create:
                _mkdir_quietly(VALUE_DIR, root)
            vdir = os.open(VALUE_DIR, _DIR_FLAGS, dir_fd=root)
            try:
                if create:
                    _mkdir_quietly(digest[:2], vdir)
                sub = os.open(digest[:2], _DIR_FLAGS, dir_fd=vdir)
            finally:
                os.close(vdir)
        finally:
            os.close(root)
        try:
            yield sub
        finally:
            os.close(sub)

    def read(self, digest: str, size: int) -> bytes:
        """The ``size`` bytes of ``digest``'s value file (raises :class:`RefusedFile` or ``OSError``)."""
        try:
            with self.subdir(digest) as sub:
                try:
                    fd = os.open(digest + VALUE_SUFFIX, _READ_FLAGS, dir_fd=sub)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                        self.unlink(digest)
                        raise RefusedFile(f"its value file is not a regular file ({exc.strerror})") from None
                    raise
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise RefusedFile("its value file is not a regular file")
                    if st.st_size != size:
                        raise RefusedFile(f"its value file has {st.st_size} bytes, the index says {size}")
                    return _read_exactly(fd, size)
                finally:
                    os.close(fd)
        except NotADirectoryError:
            raise RefusedFile("its value directory is not a plain directory") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RefusedFile("its value directory is a symbolic link") from None
            raise

    def unlink(self, digest: str) -> None:
        """Remove the directory entry of a value file (never following it); best effort."""
        try:
            with self.subdir(digest) as sub:
                unlink_quietly(sub, digest + VALUE_SUFFIX)
        except OSError:
            pass

    def volume(self) -> int:
        """Bytes of the regular files under ``v/`` (value and temporary files); an I/O error is logged."""
        total = 0
        vdir = os.path.join(self.directory, VALUE_DIR)
        try:
            if not stat.S_ISDIR(os.lstat(vdir).st_mode):
                return total
            with os.scandir(vdir) as top:
                for sub in top:
                    if not sub.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(sub.path) as files:
                        total += sum(f.stat(follow_symlinks=False).st_size for f in files
                                     if f.is_file(follow_symlinks=False))
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("KV disk tier size query failed (%r).", exc)
        return total

    def scan(self) -> dict[str, int]:
        """Digest -> size of every value file; removes dead temporary files and foreign entries on the way."""
        found: dict[str, int] = {}
        vdir = os.path.join(self.directory, VALUE_DIR)
        try:
            if not stat.S_ISDIR(os.lstat(vdir).st_mode):  # a link (or file) named v/: removed, never followed
                remove_path(vdir)
                logger.warning("KV disk tier removed foreign entry %s.", vdir)
                return found
            top = list(os.scandir(vdir))
        except FileNotFoundError:
            return found
        now = time.time()
        for sub in top:
            if not sub.is_dir(follow_symlinks=False):
                remove_path(sub.path)  # a file, link or FIFO where a value directory belongs: never followed
                logger.warning("KV disk tier removed foreign entry %s.", sub.path)
                continue
            if len(sub.name) != 2:
                logger.warning("KV disk tier ignores foreign directory %s.", sub.path)
                continue
            with os.scandir(sub.path) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    tmp = TMP_NAME.match(entry.name)
                    if _VALUE_NAME.match(entry.name) and stat.S_ISREG(st.st_mode) and entry.name[:2] == sub.name:
                        found[entry.name[: -len(VALUE_SUFFIX)]] = st.st_size
                    elif tmp and stat.S_ISREG(st.st_mode):
                        if not _pid_alive(int(tmp.group(2))) or now - st.st_mtime > _TMP_MAX_AGE_S:
                            remove_path(entry.path)
                    elif stat.S_ISDIR(st.st_mode):
                        try:
                            os.rmdir(entry.path)  # only an empty one: nothing is removed recursively
                        except OSError:
                            logger.warning("KV disk tier ignores foreign directory %s.", entry.path)
                    else:
                        remove_path(entry.path)  # a link, FIFO or stray file in the library's own directory
                        logger.warning("KV disk tier removed foreign entry %s.", entry.path)
        return found


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Create ``name`` in ``dir_fd`` (it must not exist), write ``data`` and fsync it."""
    fd = os.open(name, _WRITE_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` (an empty directory too), never following it; errors are ignored."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass
    except OSError:
        pass


def remove_path(path: str) -> None:
    """Unlink ``path`` (a link itself, never its target); errors are ignored."""
    try:
        os.unlink(path)  # never follows a link: removes the link itself
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = os.read(fd, min(size - len(chunks), 1 << 24))
        if not chunk:
            raise RefusedFile(f"its value file ended after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)


def _mkdir_quietly(name: str, dir_fd: int) -> None:
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass


__all__ = ["VALUE_DIR", "VALUE_SUFFIX", "RefusedFile", "ValueFiles", "remove_path", "temp_name", "unlink_quietly",
           "value_digest", "value_relpath", "write_file"]
