"""Django's SQLite backend, with writers queued by the kernel, not by sleeps.

SQLite allows one writer at a time. A writer that finds the write lock taken
retries in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15 … ms between
tries: when the web process and the worker write often (several short
transactions per payment), the lock sits free while writers sleep, and
throughput stops well short of the CPU (BENCHMARKS.md: 62 % of the two
cores busy at saturation). Here every writer first takes an exclusive
``flock`` on a file beside the database: a transaction from its BEGIN to its
COMMIT or ROLLBACK, a write outside a transaction (autocommit) for its one
statement. The kernel wakes the next writer the moment the lock is given
back, so SQLite's own lock is free when a writer asks for it.

A writer that never finishes its transaction blocks the others until its
process exits (the kernel then drops the lock) instead of failing them
after SQLite's timeout. Only development, tests and the benchmarks run on
SQLite; production runs PostgreSQL. Databases named by ``file:`` URI, in
memory, or whose lock file cannot be opened run without the queue, as
Django's backend does.
"""

from __future__ import annotations

import fcntl
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from django.db.backends.sqlite3 import base, creation

logger = logging.getLogger(__name__)

WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


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
        self._writers_pid = 0
        self._writers_finalizer: weakref.finalize | None = None
        self._writing = False
        # Django's documented instrumentation hook: sees every statement.
        self.execute_wrappers.append(self._queue_autocommit_write)

    def _writers_lock_fd(self) -> int | None:
        if self._writers_fd is not None and self._writers_pid != os.getpid():
            # A forked child shares the parent's lock; it takes its own.
            self._forget_writers_fd()
        if self._writers_fd is None:
            name = str(self.settings_dict["NAME"])
            if not name or self.is_in_memory_db() or name.startswith("file:"):
                return None
            try:
                # 0o666 less the umask, as SQLite creates its own side files.
                fd = os.open(writers_lock_path(name), os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                logger.warning("SQLite writers unqueued, no lock file: %r", exc)
                return None
            self._writers_fd, self._writers_pid = fd, os.getpid()
            # A wrapper dropped without close() must not keep the fd (and,
            # mid-transaction, the lock) until the process exits.
            self._writers_finalizer = weakref.finalize(self, os.close, fd)
        return self._writers_fd

    def _forget_writers_fd(self) -> None:
        if self._writers_finalizer is not None:
            self._writers_finalizer()  # closes the fd, once
        self._writers_fd = None
        self._writers_finalizer = None
        self._writing = False

    def _begin_writing(self) -> bool:
        fd = self._writers_lock_fd()
        if fd is None:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._writing = True
        return True

    def _end_writing(self) -> None:
        if self._writing and self._writers_fd is not None:
            self._writing = False
            fcntl.flock(self._writers_fd, fcntl.LOCK_UN)

    def _queue_autocommit_write(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        if (
            self._writing
            or self.in_atomic_block
            or not sql.lstrip()[:7].upper().startswith(WRITE_STATEMENTS)
        ):
            return execute(sql, params, many, context)
        self._begin_writing()
        try:
            return execute(sql, params, many, context)
        finally:
            self._end_writing()

    def _start_transaction_under_autocommit(self) -> None:
        self._begin_writing()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._end_writing()
            raise

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
            self._forget_writers_fd()
