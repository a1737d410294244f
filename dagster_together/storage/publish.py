"""Atomic publishing: a file appears at its location whole, or not at all.

One mechanism for every file the project writes (downloads, request chunks, Parquet, copies):

* A local file is written to a hidden ``.<name>.<random>.part`` next to the destination and
  ``os.replace``d onto it on commit: same directory, so the rename is atomic and readers see the
  old file or the whole new one. The part file is locked (``flock``) while it lives, so a later
  write to the same place can tell the leftovers of a killed process (unlocked) from a live
  writer (locked) and sweep them.
* On an object store the bytes go to a buffered upload (S3 multipart, GCS resumable) that only
  ``commit`` completes and that is aborted on failure: no object appears before the upload ends.

:func:`open_pending` gives a :class:`PendingFile`: write to it, then ``commit()`` or ``abort()``,
or use it as a context manager. Tools that write by path (pyarrow) pass ``stage_locally=True``
and write to ``local_path``. :func:`publish_file` copies a finished local file.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no stale-part sweep, the rest works the same
    fcntl = None  # type: ignore[assignment]

from dagster_together.storage.urls import filesystem, is_local

__all__ = [
    "REMOTE_BLOCK_SIZE",
    "LocalPendingFile",
    "PendingFile",
    "RemotePendingFile",
    "commit_all",
    "open_pending",
    "publish_file",
]

_log = logging.getLogger(__name__)

#: Part size of uploads to object stores (s3fs buffers one block, then sends it as one part).
#: Peak memory is about 3-4 blocks; 8 MiB is what the download measured as the best trade
#: (see ``dagster_together.client.download.REMOTE_BLOCK_SIZE``) and keeps S3's 10,000-part
#: cap at 80 GB.
REMOTE_BLOCK_SIZE = 8 * 1024 * 1024
# Bytes read per call when copying a local file.
_COPY_SIZE = 8 * 1024 * 1024


class PendingFile(ABC):
    """A file on its way to ``location``: nothing appears there before :meth:`commit`.

    Use it as a context manager (commit on a clean exit, abort on an exception) or call
    :meth:`commit` / :meth:`abort` yourself. :meth:`abort` after :meth:`commit` does nothing, so
    it is safe in a ``finally``.

    Attributes:
        location: where the file appears (an absolute path, or the URL as given).
        local_path: the local file that holds the bytes until the commit, which tools that write
            by path may write to; None when the bytes stream straight to an object store.
    """

    location: str
    local_path: str | None = None

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``."""

    @abstractmethod
    def restart(self) -> None:
        """Throw away what was written and start again from an empty file."""

    @abstractmethod
    def commit(self) -> None:
        """Publish the file at ``location`` (atomically), replacing any file there."""

    @abstractmethod
    def abort(self) -> None:
        """Throw the file away; ``location`` is left as it was. Nothing after a commit."""

    @abstractmethod
    def _unpublish(self) -> None:
        """Remove the committed file again (best effort, for :func:`commit_all`)."""

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


class LocalPendingFile(PendingFile):
    """A local file written as ``.<name>.<random>.part`` beside ``path``, renamed onto it.

    Args:
        path: the destination (made absolute; its directory is created).
        buffering: as for :func:`open`; 0 writes every byte through at once (a download resumes
            from what is in the file, so what it counts as written must be there).
    """

    def __init__(self, path: str, *, buffering: int = -1) -> None:
        self.location = os.path.abspath(path)
        directory, name = os.path.split(self.location)
        os.makedirs(directory, exist_ok=True)
        _sweep_stale_parts(directory, name)
        self._part = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.part")
        self.local_path = self._part
        # O_EXCL: never write through a file (or symlink) someone else put there; 0o666 lets the
        # umask decide the final permissions, like any other file the user creates.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(self._part, flags, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._file: BinaryIO = os.fdopen(fd, "wb", buffering=buffering)
        except BaseException:
            os.close(fd)
            os.remove(self._part)
            raise
        self._raw = buffering == 0
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._raw:
            self._file.write(data)
            return
        view = memoryview(data)
        while view:  # a raw write may take fewer bytes than offered
            view = view[self._file.write(view) :]

    def restart(self) -> None:
        self._file.seek(0)
        self._file.truncate()

    def commit(self) -> None:
        if self._done:
            return
        # No fsync: the rename is atomic, so a killed process leaves the old file or the whole
        # new one. Only a power loss in the seconds after could leave it short (an fsync of
        # 1 GB cost 15-20% of a download's throughput).
        self._file.flush()
        os.replace(self._part, self.location)  # renamed while still locked: never swept
        self._done = True
        self._file.close()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with suppress(OSError):
            self._file.close()
        with suppress(FileNotFoundError):
            os.remove(self._part)

    def _unpublish(self) -> None:
        with suppress(FileNotFoundError):
            os.remove(self.location)


def _sweep_stale_parts(directory: str, name: str) -> None:
    """Remove ``.<name>.*.part`` files left by killed writers (nobody holds their lock)."""
    if fcntl is None:
        return
    prefix = f".{name}."
    with suppress(OSError):
        entries = [e for e in os.listdir(directory) if e.startswith(prefix) and e.endswith(".part")]
        for entry in entries:
            stale = os.path.join(directory, entry)
            try:
                fd = os.open(stale, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            with suppress(FileNotFoundError):
                os.remove(stale)
            _log.info("Removed %s, left by an interrupted write.", stale)


class RemotePendingFile(PendingFile):
    """Streams into ``fs.open(path, "wb")`` of a non-local fsspec filesystem.

    Why ``discard()`` and not ``close()`` on failure: closing an fsspec ``AbstractBufferedFile``
    *publishes* what was written, even after an exception inside ``with fs.open(...)`` (s3fs
    completes the multipart upload in ``close``). ``discard()`` throws the pending upload away
    instead (s3fs aborts the multipart upload, gcsfs cancels its resumable upload), and marking
    the file closed stops ``__del__`` from flushing it later. Files that are not buffered uploads
    (``memory://``, ...) are visible as soon as they are opened, so their partial is removed.

    Args:
        fs: the filesystem, path: the path on it, location: the URL as the user gave it.
        block_size: the upload's part size.
    """

    def __init__(
        self, fs: Any, path: str, location: str, *, block_size: int = REMOTE_BLOCK_SIZE
    ) -> None:
        self.location = location
        self._fs = fs
        self._path = path
        self._block_size = block_size
        self._file: Any = self._open()
        self._done = False

    def _open(self) -> Any:
        return self._fs.open(self._path, "wb", block_size=self._block_size)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._file.write(data)

    def restart(self) -> None:
        self._discard()
        self._file = self._open()

    def commit(self) -> None:
        if self._done:
            return
        self._file.close()  # the final flush completes the upload
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()

    def _unpublish(self) -> None:
        _remove_object(self._fs, self._path, self.location)

    def _discard(self) -> None:
        from fsspec.spec import AbstractBufferedFile

        handle = self._file
        if isinstance(handle, AbstractBufferedFile):
            discards = type(handle).discard is not AbstractBufferedFile.discard
            try:
                handle.discard()
            except Exception:
                _log.warning(
                    "Could not abort the partial upload to %s; an incomplete upload may remain "
                    "(it is not visible as an object).",
                    self.location,
                    exc_info=True,
                )
            finally:
                handle.closed = True
            if discards:
                return  # nothing was published: an older object at the destination is untouched
        else:
            with suppress(Exception):
                handle.close()
        # A backend that publishes while writing: remove what it published.
        try:
            if self._fs.exists(self._path):
                self._fs.rm_file(self._path)
        except Exception:
            _log.warning("Could not remove the partial file %s", self.location, exc_info=True)


class _StagedUpload(PendingFile):
    """For an object store, bytes kept in a local temporary file and uploaded by the commit:
    for writers that need a local path, or whose files must all wait for one moment."""

    def __init__(
        self, fs: Any, path: str, location: str, *, block_size: int, buffering: int
    ) -> None:
        self.location = location
        self._fs = fs
        self._path = path
        self._block_size = block_size
        self._dir = tempfile.mkdtemp(prefix="dagster-together-")
        try:
            self._local = LocalPendingFile(os.path.join(self._dir, "staged"), buffering=buffering)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.local_path = self._local.local_path
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._local.write(data)

    def restart(self) -> None:
        self._local.restart()

    def commit(self) -> None:
        if self._done:
            return
        try:
            self._local.commit()
            upload = RemotePendingFile(
                self._fs, self._path, self.location, block_size=self._block_size
            )
            with upload:
                _copy(self._local.location, upload)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._local.abort()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _unpublish(self) -> None:
        _remove_object(self._fs, self._path, self.location)


def _remove_object(fs: Any, path: str, location: str) -> None:
    try:
        fs.rm_file(path)  # rm() would expand glob characters in the path
    except Exception:  # noqa: BLE001 - the error that made us undo matters more
        _log.warning("Could not remove %s after a failed publish", location)


def open_pending(
    location: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    stage_locally: bool = False,
    block_size: int = REMOTE_BLOCK_SIZE,
    buffering: int = -1,
) -> PendingFile:
    """A :class:`PendingFile` for ``location`` (a local path or an fsspec URL).

    Args:
        location: where the file is to appear.
        storage_options: passed to fsspec for URLs.
        stage_locally: on an object store, keep the bytes in a local temporary file until the
            commit uploads them (``local_path`` is then set, and nothing is sent before the
            commit). Local destinations always have a ``local_path``.
        block_size: the part size of uploads to object stores.
        buffering: for the local file, as for :func:`open`.
    """
    fs, path = filesystem(location, storage_options)
    if is_local(fs):
        return LocalPendingFile(path, buffering=buffering)
    if stage_locally:
        return _StagedUpload(fs, path, location, block_size=block_size, buffering=buffering)
    return RemotePendingFile(fs, path, location, block_size=block_size)


def publish_file(
    local_path: str | os.PathLike[str],
    location: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    block_size: int = REMOTE_BLOCK_SIZE,
) -> None:
    """Copy the local file ``local_path`` to ``location``, published atomically: a failure or a
    killed process leaves the old file (or nothing) there, never part of the new one."""
    with open_pending(location, storage_options, block_size=block_size) as out:
        _copy(os.fspath(local_path), out)


def publish_parquet(
    table: Any,
    location: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    row_group_size: int | None = None,
) -> None:
    """Write a pyarrow ``table`` as one Parquet file at ``location``, published atomically
    (``row_group_size``: rows per row group, pyarrow's default when None)."""
    parts = ParquetParts(location, storage_options, row_group_size=row_group_size)
    try:
        parts.write(table)
        parts.commit()
    finally:
        parts.abort()  # nothing after the commit


class ParquetParts:
    """A Parquet file written a table at a time (each of them its row groups) and published at
    ``location`` by :meth:`commit`: a big table never has to be in memory whole. Nothing
    appears there before the commit; :meth:`abort` (safe after a commit) leaves nothing."""

    def __init__(
        self,
        location: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        row_group_size: int | None = None,
    ) -> None:
        self._out = open_pending(location, storage_options, stage_locally=True)
        self._row_group_size = row_group_size
        self._writer: Any = None

    @property
    def written(self) -> bool:
        """Whether a table has been written (the file has a schema)."""
        return self._writer is not None

    def write(self, table: Any) -> None:
        """Append the rows of a pyarrow ``table`` (every table with the first one's schema)."""
        import pyarrow.parquet as pq

        if self._writer is None:
            assert self._out.local_path is not None  # always, with stage_locally
            self._writer = pq.ParquetWriter(self._out.local_path, table.schema)
        self._writer.write_table(table, row_group_size=self._row_group_size)

    def commit(self) -> None:
        """Close the file and publish it (at least one table must have been written)."""
        if self._writer is None:
            raise ValueError(f"ParquetParts: nothing was written for {self._out.location}.")
        self._writer.close()
        self._writer = None
        self._out.commit()

    def abort(self) -> None:
        """Drop the file (nothing after a commit)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._out.abort()


def commit_all(files: Sequence[PendingFile]) -> None:
    """Commit ``files`` as one set: if one fails, the rest are aborted and those already
    committed are removed again (best effort), so a failure leaves no half set behind."""
    done: list[PendingFile] = []
    try:
        for pending in files:
            pending.commit()
            done.append(pending)
    except BaseException:
        for pending in files:
            pending.abort()
        for pending in done:
            pending._unpublish()
        raise


def _copy(local_path: str, out: PendingFile) -> None:
    # One buffer for the whole copy: a new bytes object per read leaves freed 8 MB blocks that
    # malloc keeps, and the process grows by a few of them per file copied.
    buffer = bytearray(_COPY_SIZE)
    view = memoryview(buffer)
    with open(local_path, "rb") as source:  # buffered: readinto fills the buffer from a pipe too
        while size := source.readinto(buffer):
            out.write(view[:size])
