"""Process-wide settings that a run holds while it lasts.

Some settings belong to the whole Python process, not to a run: numpy's
huge-page advice, the warning filters. A run changes them for its own
duration; several runs may overlap (two threads calling
:func:`changedet.detect`), and none may undo a setting under another or
leave it behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SharedSetting", "FILTER_SWAPS"]

#: Held around the library calls changedet makes that wrap themselves in
#: ``warnings.catch_warnings`` (rasterio's ``shapes`` and ``rasterize`` on
#: block threads, shapely's ``total_bounds``): it saves the process's whole
#: filter list and puts it back on leaving, so two threads inside at once
#: can put back a list that holds the other's ``simplefilter("ignore")``,
#: and every warning in the user's process is silenced from then on (seen:
#: 6 in 50 tries of two overlapping runs on two threads each). Both calls
#: hold the GIL anyway: two threads gain nothing by running them at once.
#: The user's own threads entering ``catch_warnings`` meanwhile are beyond
#: any lock of ours.
FILTER_SWAPS = threading.Lock()


class SharedSetting:
    """A setting applied by the first of its users to enter, undone by the last to leave.

    Parameters
    ----------
    apply : callable
        Applies the setting; returns what `undo` needs (e.g. the value before).
    undo : callable
        Takes what `apply` returned and undoes it.

    Examples
    --------
    >>> state = {"quiet": False}
    >>> quiet = SharedSetting(lambda: state.update(quiet=True), lambda _: state.update(quiet=False))
    >>> with quiet.held():
    ...     with quiet.held():
    ...         pass
    ...     state["quiet"]
    True
    >>> state["quiet"]
    False
    """

    def __init__(self, apply: Callable[[], Any], undo: Callable[[Any], None]) -> None:
        self._apply, self._undo = apply, undo
        self._lock = threading.Lock()
        self._users = 0
        self._state: Any = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the setting for the duration of the ``with`` block."""
        with self._lock:
            if self._users == 0:
                self._state = self._apply()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    state, self._state = self._state, None
                    self._undo(state)
