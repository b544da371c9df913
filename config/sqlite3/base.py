"""Django's SQLite backend, with writers queued by the kernel, not by sleeps.

SQLite allows one writer at a time. A transaction that finds the write lock
taken retries in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15 … ms
between tries: when the web process and the worker write often (several
short transactions per payment), the lock sits free while writers sleep,
and throughput stops well short of the CPU (BENCHMARKS.md: 62 % of the two
cores busy at saturation). Here a transaction first takes an exclusive
``flock`` on a file beside the database; the kernel wakes the next writer
the moment the lock is given back, so SQLite's own lock is always free when
BEGIN asks for it. Writes outside a transaction (autocommit) still meet
SQLite's busy handler, as before.

A writer that never finishes its transaction blocks the others until its
process exits (the kernel then drops the lock) instead of failing them
after SQLite's timeout. Only development, tests and the benchmarks run on
SQLite; production runs PostgreSQL.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from django.db.backends.sqlite3 import base, creation


def writers_lock_path(database: str) -> str:
    return f"{database}-writers"


class DatabaseCreation(creation.DatabaseCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        super()._destroy_test_db(test_database_name, verbosity)
        if test_database_name and not self.is_in_memory_db(test_database_name):
            try:
                os.remove(writers_lock_path(test_database_name))
            except FileNotFoundError:
                pass


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers_fd: int | None = None
        self._writing = False

    def _writers_lock_fd(self) -> int | None:
        if self._writers_fd is None:
            name = str(self.settings_dict["NAME"])
            if self.is_in_memory_db() or not name:
                return None
            self._writers_fd = os.open(
                writers_lock_path(name), os.O_RDWR | os.O_CREAT, 0o600
            )
        return self._writers_fd

    def _start_transaction_under_autocommit(self) -> None:
        fd = self._writers_lock_fd()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._writing = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._end_writing()
            raise

    def _end_writing(self) -> None:
        if self._writing and self._writers_fd is not None:
            self._writing = False
            fcntl.flock(self._writers_fd, fcntl.LOCK_UN)

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._end_writing()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._end_writing()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._end_writing()
            if self._writers_fd is not None:
                os.close(self._writers_fd)
                self._writers_fd = None
