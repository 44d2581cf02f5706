"""Dialogs: settings, keyboard shortcuts, export summary, export-to-folders options."""

from __future__ import annotations

import html

from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFormLayout, QLabel, QRadioButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout)

from fewshot_gui.gui.settings import AppSettings

SHORTCUTS = [
    ("Ctrl+N", "New project"),
    ("Ctrl+O", "Open project"),
    ("Ctrl+S", "Save project"),
    ("Ctrl+Shift+S", "Save project as"),
    ("Ctrl+Shift+O", "Choose the query folder"),
    ("Ctrl+L", "Label the query folder"),
    ("Esc", "Cancel the running job"),
    ("1 \u2013 9", "Label the selected images as class 1 \u2013 9"),
    ("N", "None of these: the selected images fit no class"),
    ("0", "Clear the confirmed label of the selected images"),
    ("Enter", "Accept the predictions of the selected images"),
    ("Ctrl+R", "Re-sort (the tiles keep their places while you review)"),
    ("Ctrl+Z", "Undo"),
    ("Ctrl+Shift+Z", "Redo"),
    ("Ctrl+A", "Select all shown images"),
    ("Ctrl+F", "Find by file name"),
    ("Ctrl+E", "Export CSV"),
    ("Ctrl+Shift+E", "Export into class folders"),
    ("Ctrl+,", "Settings"),
    ("F1", "This list"),
    ("Ctrl+Q", "Quit"),
]


def two_column_table(headers: tuple[str, str], rows: list[tuple[str, str]]) -> QTableWidget:
    """A read-only table of text, the last column stretched."""
    t = QTableWidget(len(rows), 2)
    t.setHorizontalHeaderLabels(list(headers))
    for r, (left, right) in enumerate(rows):
        t.setItem(r, 0, QTableWidgetItem(left))
        t.setItem(r, 1, QTableWidgetItem(right))
    t.resizeColumnsToContents()
    t.horizontalHeader().setStretchLastSection(True)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    return t


class HelpDialog(QDialog):
    """How to start, and the keyboard shortcuts."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        t = two_column_table(("Keys", "Action"), SHORTCUTS)
        intro = QLabel("Drop folders of example images on the left (one class per folder), choose the "
                       "query folder, press Label. Review the lowest-confidence images first: select "
                       "tiles and press a class number, or Enter to accept. Drag tiles onto a class too.")
        intro.setWordWrap(True)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        bb.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(t)
        lay.addWidget(bb)
        self.resize(520, 560)


class SettingsDialog(QDialog):
    """Edits :class:`AppSettings`; :meth:`apply` writes them back."""

    def __init__(self, settings: AppSettings, backbones: list[str], parent=None):
        super().__init__(parent)
        self.settings = settings
        self.setWindowTitle("Settings")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(settings.device)
        self.backbone = QComboBox()
        self.backbone.addItems(backbones)
        self.backbone.setCurrentText(settings.default_backbone)
        self.thumb = QSpinBox()
        self.thumb.setRange(64, 320)
        self.thumb.setSingleStep(16)
        self.thumb.setValue(settings.thumb_size)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(settings.threshold)
        self.disk = QCheckBox("Keep thumbnails on disk (faster re-opening)")
        self.disk.setChecked(settings.disk_thumbnails)
        form = QFormLayout()
        form.addRow("Device:", self.device)
        form.addRow("Default backbone:", self.backbone)
        form.addRow("Thumbnail size:", self.thumb)
        form.addRow("Uncertain below:", self.threshold)
        form.addRow("", self.disk)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(bb)

    def apply(self) -> None:
        s = self.settings
        s.device = self.device.currentText()
        s.default_backbone = self.backbone.currentText()
        s.thumb_size = self.thumb.value()
        s.threshold = self.threshold.value()
        s.disk_thumbnails = self.disk.isChecked()
        s.sync()


class ExportFoldersDialog(QDialog):
    """Copy or link the images into ``target/<class>/`` (the target folder is chosen before)."""

    def __init__(self, target: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export into class folders")
        self.copy = QRadioButton("Copy the images (independent files)")
        self.link = QRadioButton("Link to the images (no extra disk space)")
        self.copy.setChecked(True)
        g = QButtonGroup(self)
        g.addButton(self.copy)
        g.addButton(self.link)
        self.unknown = QCheckBox("Put images that fit no class (flagged unknown or \u201cnone of these\u201d) "
                                 "into _unknown/ (unchecked: leave them out)")
        self.unknown.setChecked(True)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        bb.accepted.connect(self.accept)
        bb.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Into {html.escape(target)}/&lt;class&gt;/"))
        lay.addWidget(self.copy)
        lay.addWidget(self.link)
        lay.addWidget(self.unknown)
        lay.addWidget(bb)

    @property
    def mode(self) -> str:
        return "link" if self.link.isChecked() else "copy"

    @property
    def unknown_folder(self) -> str:
        """``"folder"`` (into ``_unknown/``) or ``"skip"``, as the core's class-folder export takes it."""
        return "folder" if self.unknown.isChecked() else "skip"


class SummaryDialog(QDialog):
    """After an export: where it went and how many images per class."""

    def __init__(self, title: str, headline: str, counts: list[tuple[str, int]], notes: list[str], parent=None):
        super().__init__(parent)
        self.setWindowTitle(title)
        t = two_column_table(("Class", "Images"), [(c, f"{n:,}") for c, n in counts])
        head = QLabel(headline)
        head.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(head)
        lay.addWidget(t)
        for n in notes:
            lab = QLabel(n)
            lab.setWordWrap(True)
            lay.addWidget(lab)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        bb.accepted.connect(self.accept)
        lay.addWidget(bb)
        self.resize(420, 380)
