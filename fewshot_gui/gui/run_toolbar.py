"""The window's run toolbar: query folder, model (Auto, a backbone or a model file), method, Label.

"Auto" (backbone ``auto``, first in the model box) lets each labeling run choose the model on the
examples (:mod:`fewshot_gui.core.models.auto`); the run's first note, shown in the status bar,
says which model and why.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QComboBox, QFileDialog, QLabel, QPushButton, QToolBar

from fewshot_gui.core.embed.backbones import list_backbones
from fewshot_gui.core.fewshot import available_methods
from fewshot_gui.core.models.choice import AUTO
from fewshot_gui.core.session.project import Project

# What a model file can be (safetensors; older files in the .fsm container still load).
MODEL_FILE_FILTER = "Model files (*.safetensors *.fsm);;All files (*)"
_CHOOSE_FILE = "__file__"
_FILE_PREFIX = "file:"
AUTO_TEXT = "Auto"
AUTO_TIP = ("Choose the model on your examples: each available backbone and bundled model classifies every "
            "example from the others, the most accurate is used (ties: the faster). The status bar says "
            "which model was picked and why.")


# What a method does, where its name alone does not say it (tooltips of the method box).
_METHOD_TIPS = {
    "finetune": "Test-time adaptation: the top of EfficientNet-Lite0 adapts to your examples before the folder "
                "is embedded, when examples held out from your own set say it helps (two or more examples "
                "per class); the summary says whether it adapted and why.",
}


class RunToolbar(QToolBar):
    """Emits the user's choices; :meth:`sync` shows a project's."""

    backboneChosen = Signal(str)     # a backbone name
    modelFileChosen = Signal(Path)   # a model file
    methodChosen = Signal(str)       # a method name
    labelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__("Run", parent)
        self.setObjectName("run_toolbar")
        self.setMovable(False)
        self.query_label = QLabel()
        self.query_label.setMinimumWidth(120)
        self.backbone_box = QComboBox()
        self.backbone_box.setMinimumWidth(170)
        self.backbone_box.setToolTip("Feature extractor: built-in, torchvision, or a model file")
        self.method_box = QComboBox()
        self.label_button = QPushButton("Label")
        self.label_button.setDefault(True)
        self.label_button.setToolTip("Label the query folder (Ctrl+L)")
        self.label_button.clicked.connect(self.labelRequested)
        self._shown = 0  # the backbone box entry of the project shown
        self.fill_model_boxes()
        self.backbone_box.activated.connect(self._on_backbone)
        self.method_box.activated.connect(lambda _k: self.methodChosen.emit(self.method_box.currentData()))

    def add_items(self, query: QAction, after_label: list[QAction | None]) -> None:
        """Lay out the toolbar: ``query``, the model choice and Label, then ``after_label``
        (None: a separator)."""
        self.addAction(query)
        self.addWidget(self.query_label)
        self.addSeparator()
        self.addWidget(QLabel(" Model: "))
        self.addWidget(self.backbone_box)
        self.addWidget(QLabel(" Method: "))
        self.addWidget(self.method_box)
        self.addWidget(self.label_button)
        self.addSeparator()
        for a in after_label:
            if a is None:
                self.addSeparator()
            else:
                self.addAction(a)

    def fill_model_boxes(self) -> None:
        self.backbone_box.clear()
        self.backbone_box.addItem(AUTO_TEXT, AUTO)
        self.backbone_box.setItemData(0, AUTO_TIP, Qt.ItemDataRole.ToolTipRole)
        for info in list_backbones():
            self.backbone_box.addItem(info.name if info.weights_available else f"{info.name} (no weights)", info.name)
            if not info.weights_available:
                self.backbone_box.setItemData(self.backbone_box.count() - 1,
                                              f"Weights not found: {info.source}", Qt.ItemDataRole.ToolTipRole)
        self.backbone_box.addItem("Model file\u2026", _CHOOSE_FILE)
        self.method_box.clear()
        for m in available_methods():
            self.method_box.addItem(m, m)
            if m in _METHOD_TIPS:
                self.method_box.setItemData(self.method_box.count() - 1, _METHOD_TIPS[m], Qt.ItemDataRole.ToolTipRole)

    def backbone_names(self) -> list[str]:
        """The backbone names offered, ``auto`` first (not model files)."""
        data = [self.backbone_box.itemData(k) for k in range(self.backbone_box.count())]
        return [d for d in data if isinstance(d, str) and d != _CHOOSE_FILE and not d.startswith(_FILE_PREFIX)]

    def sync(self, project: Project) -> None:
        """Show the project's query folder, model and method."""
        box = self.backbone_box
        if project.model_file is not None:
            data = f"{_FILE_PREFIX}{project.model_file}"
            if box.findData(data) < 0:
                box.insertItem(box.count() - 1, project.model_file.name, data)
            box.setCurrentIndex(box.findData(data))
        else:
            if box.findData(project.backbone) < 0:
                box.insertItem(0, project.backbone, project.backbone)
            box.setCurrentIndex(box.findData(project.backbone))
        self._shown = box.currentIndex()
        if self.method_box.findData(project.method) < 0:
            self.method_box.addItem(project.method, project.method)
        self.method_box.setCurrentIndex(self.method_box.findData(project.method))
        q = project.query_folder
        self.query_label.setText(f" {q.name}/ " if q else " no query folder ")
        self.query_label.setToolTip(str(q) if q else "Choose the folder of images to label")

    def set_busy(self, busy: bool) -> None:
        for w in (self.label_button, self.backbone_box, self.method_box):
            w.setEnabled(not busy)

    def _on_backbone(self, k: int) -> None:
        data = self.backbone_box.itemData(k)
        if data == _CHOOSE_FILE:
            f, _ = QFileDialog.getOpenFileName(self, "Choose a model file", "", MODEL_FILE_FILTER)
            if f:
                self.modelFileChosen.emit(Path(f).resolve())
            else:
                self.backbone_box.setCurrentIndex(self._shown)
        elif isinstance(data, str) and data.startswith(_FILE_PREFIX):
            self.modelFileChosen.emit(Path(data[len(_FILE_PREFIX):]))
        elif isinstance(data, str):
            self.backboneChosen.emit(data)
