"""Undoable edits (QUndoStack): labels, support sets and classes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QUndoCommand

from fewshot_gui.core.io.export import UNKNOWN_LABEL
from fewshot_gui.core.session.project import ClassDef
from fewshot_gui.gui.document import Document


class AssignLabels(QUndoCommand):
    """Confirm ``label`` (a class name, :data:`UNKNOWN_LABEL` for "none of these", or None to
    clear) for items; optionally add them to the examples of their class."""

    def __init__(self, doc: Document, items: list[int], labels: list[str | None], add_to_support: bool = False,
                 text: str | None = None):
        n = len(items)
        lab = labels[0] if labels and all(l == labels[0] for l in labels) else None
        images = f"{n} image{'s' if n != 1 else ''}"
        super().__init__(text or (f"Mark {images} as none of these" if lab == UNKNOWN_LABEL
                                  else f"Label {images} as {lab!r}" if lab else f"Change labels of {images}"))
        self.doc, self.items, self.labels = doc, list(items), list(labels)
        self.old = doc.confirmed_of(self.items)
        self.add_to_support = add_to_support
        self.added: dict[str, list[Path]] = {}

    def redo(self) -> None:
        self.doc.set_confirmed(self.items, self.labels)
        if self.add_to_support:
            by_class: dict[str, list[Path]] = {}
            for i, lab in zip(self.items, self.labels):
                if lab is not None and self.doc.class_index(lab) >= 0:
                    by_class.setdefault(lab, []).append(self.doc.paths[i])
            self.added = {c: self.doc.add_support(c, ps) for c, ps in by_class.items()}

    def undo(self) -> None:
        for c, ps in self.added.items():
            if ps and self.doc.class_index(c) >= 0:
                self.doc.remove_support(c, ps)
        self.added = {}
        self.doc.set_confirmed(self.items, self.old)


def accept_predictions(doc: Document, items: list[int]) -> AssignLabels | None:
    """Confirm the predicted class of those ``items`` that have a prediction and no verdict yet
    (None when there is none)."""
    a = doc.arrays()
    keep = [i for i in items if a.pred[i] >= 0 and not a.reviewed[i]]
    if not keep:
        return None
    labels = [doc.class_names[a.pred[i]] for i in keep]
    return AssignLabels(doc, keep, labels, text=f"Accept {len(keep)} prediction{'s' if len(keep) != 1 else ''}")


class AddSupport(QUndoCommand):
    def __init__(self, doc: Document, name: str, paths: list[Path]):
        super().__init__(f"Add {len(paths)} example{'s' if len(paths) != 1 else ''} to {name!r}")
        self.doc, self.name, self.paths = doc, name, list(paths)
        self.added: list[Path] = []

    def redo(self) -> None:
        self.added = self.doc.add_support(self.name, self.paths)

    def undo(self) -> None:
        if self.added:
            self.doc.remove_support(self.name, self.added)


class RemoveSupport(QUndoCommand):
    def __init__(self, doc: Document, name: str, paths: list[Path]):
        super().__init__(f"Remove {len(paths)} example{'s' if len(paths) != 1 else ''} from {name!r}")
        self.doc, self.name, self.paths = doc, name, list(paths)
        self.removed: list[tuple[int, Path]] = []

    def redo(self) -> None:
        self.removed = self.doc.remove_support(self.name, self.paths)

    def undo(self) -> None:
        if self.removed:
            self.doc.restore_support(self.name, self.removed)


class AddClass(QUndoCommand):
    def __init__(self, doc: Document, name: str, support: list[Path] | None = None, color: str | None = None,
                 index: int | None = None):
        super().__init__(f"Add class {name!r}")
        self.doc = doc
        self.cls = ClassDef(name, color or doc.new_class_color(), [Path(p) for p in (support or [])])
        self.index = len(doc.classes) if index is None else index

    def redo(self) -> None:
        self.doc.insert_class(self.index, ClassDef(self.cls.name, self.cls.color, list(self.cls.support)))

    def undo(self) -> None:
        self.doc.take_class(self.cls.name)


class DeleteClass(QUndoCommand):
    def __init__(self, doc: Document, name: str):
        super().__init__(f"Delete class {name!r}")
        self.doc, self.name = doc, name
        self.saved: tuple[int, ClassDef, dict[str, str]] | None = None

    def redo(self) -> None:
        self.saved = self.doc.take_class(self.name)

    def undo(self) -> None:
        if self.saved:
            i, cls, conf = self.saved
            self.doc.insert_class(i, cls, conf)


class RenameClass(QUndoCommand):
    def __init__(self, doc: Document, old: str, new: str):
        super().__init__(f"Rename class {old!r} to {new!r}")
        self.doc, self.old, self.new = doc, old, new

    def redo(self) -> None:
        self.doc.rename_class(self.old, self.new)

    def undo(self) -> None:
        self.doc.rename_class(self.new, self.old)


class RecolorClass(QUndoCommand):
    def __init__(self, doc: Document, name: str, color: str):
        super().__init__(f"Change colour of {name!r}")
        self.doc, self.name, self.color = doc, name, color
        self.old = doc.classes[doc.class_index(name)].color

    def redo(self) -> None:
        self.doc.set_class_color(self.name, self.color)

    def undo(self) -> None:
        self.doc.set_class_color(self.name, self.old)


class MoveClass(QUndoCommand):
    def __init__(self, doc: Document, name: str, index: int):
        super().__init__(f"Move class {name!r}")
        self.doc, self.name, self.index = doc, name, index
        self.old = doc.class_index(name)

    def redo(self) -> None:
        self.doc.move_class(self.name, self.index)

    def undo(self) -> None:
        self.doc.move_class(self.name, self.old)
