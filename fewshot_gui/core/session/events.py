"""Plain-callback events for views of a :class:`~fewshot_gui.core.session.session.LabelingSession`.

``session.events.predictions_changed.connect(fn)``; the session calls ``fn(*args)`` on the thread
that changed its state (the GUI thread in the app). No Qt: the app's adapter re-emits them as
Qt signals.
"""

from __future__ import annotations

from typing import Any, Callable

class Event:
    """A list of subscribers called in order with the emitted arguments."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[..., Any]] = []

    def connect(self, fn: Callable[..., Any]) -> None:
        self._subscribers.append(fn)

    def disconnect(self, fn: Callable[..., Any]) -> None:
        self._subscribers.remove(fn)

    def emit(self, *args: Any) -> None:
        for fn in list(self._subscribers):
            fn(*args)


class SessionEvents:
    """What a view of a labeling session can listen to."""

    def __init__(self) -> None:
        #: a new project or label set: rebuild everything
        self.project_reset = Event()
        #: class names, colours, order or support sets changed
        self.classes_changed = Event()
        #: the list of query images changed
        self.query_changed = Event()
        #: ``(items)``: predictions of the active label set changed (index array, or None for all)
        self.predictions_changed = Event()
        #: ``(items)``: confirmed labels of these query images changed (list of indices)
        self.confirmed_changed = Event()
        #: a labeling run of the active label set started, or its result (or a restored one)
        #: arrived: the order a view holds during review may be recomputed
        self.run_changed = Event()
        #: ``(dirty)``: the project has (or no longer has) unsaved changes
        self.dirty_changed = Event()
        #: ``(text)``: a one-line status message for the user
        self.message = Event()
