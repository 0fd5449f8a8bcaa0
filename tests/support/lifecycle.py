"""``with`` for the servers the tests start: ``start()`` on entry, ``cleanup()`` on exit, and
``cleanup()`` also when ``start()`` itself fails half-way."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T", bound="Started")


class Started:
    """Mixin: the class defines ``start() -> self`` and an idempotent ``cleanup()``."""

    def start(self: T) -> T:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        self.cleanup()
