"""The main window: a thin composition of the panels, the actions and the status bar."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QKeySequence, QUndoStack
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QProgressBar, QPushButton, QSplitter, QToolBar, QWidget)

from fewshot_gui.core.errors import FewShotError
from fewshot_gui.core.session.project import SUFFIX, Project
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui.classes_panel import ClassesPanel
from fewshot_gui.gui.controller import LabelController
from fewshot_gui.gui.details import DetailsPanel
from fewshot_gui.gui.dialogs import ExportFoldersDialog, HelpDialog, SettingsDialog, SummaryDialog
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.grid import SORTS, GridPanel
from fewshot_gui.gui.settings import AppSettings
from fewshot_gui.gui.thumbs import ThumbnailCache

PROJECT_FILTER = f"Few-shot projects (*{SUFFIX});;JSON files (*.json);;All files (*)"
AUTOSAVE_MS = 60_000
GIL_SWITCH_S = 0.0002


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings | None = None, cache_dir: Path | None = None, parent=None):
        super().__init__(parent)
        # Worker threads run Python too; a short GIL switch interval keeps the GUI thread's many
        # short Python callbacks (painting tiles) from each waiting up to 5 ms for the GIL.
        sys.setswitchinterval(GIL_SWITCH_S)
        self.settings = settings or AppSettings()
        self.ask_on_close = True
        self.doc = Document(self)
        self.undo = QUndoStack(self)
        thumb_root = None
        if self.settings.disk_thumbnails:
            from fewshot_gui.core.embed.cache import default_cache_dir

            thumb_root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "thumbnails"
        self.thumbs = ThumbnailCache(self, disk_root=thumb_root)
        self.controller = LabelController(self.doc, self.settings, cache_dir, self)

        self.classes = ClassesPanel(self.doc, self.thumbs, self.undo, self.assign)
        self.grid = GridPanel(self.doc, self.thumbs)
        self.details = DetailsPanel(self.doc, self.thumbs)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.classes)
        split.addWidget(self.grid)
        split.addWidget(self.details)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([330, 760, 330])
        self.setCentralWidget(split)
        self.grid.set_thumb_size(self.settings.thumb_size)
        self.grid.set_threshold(self.settings.threshold)

        self._make_actions()
        self._make_toolbar()
        self._make_menus()
        self._make_statusbar()

        self.grid.currentItemChanged.connect(self.details.show_item)
        self.grid.assignRequested.connect(self.assign)
        self.grid.acceptRequested.connect(self.accept)
        self.grid.supportRequested.connect(self.add_items_to_support)
        self.classes.filterRequested.connect(lambda k: self.grid.set_filter("class", k))
        self.classes.labelSetRequested.connect(self.switch_label_set)
        self.controller.busyChanged.connect(self._on_busy)
        self.controller.progress.connect(self._on_progress)
        self.controller.message.connect(self.status)
        self.controller.error.connect(self.show_error)
        self.controller.labeled.connect(self._on_labeled)
        self.doc.message.connect(self.status)
        self.doc.dirtyChanged.connect(self._on_clean_changed)
        self.doc.projectReset.connect(self._on_project_reset)
        self.doc.classesChanged.connect(self._schedule_update)
        self.undo.cleanChanged.connect(self._on_clean_changed)

        self._update_timer = QTimer(self)
        self._update_timer.setSingleShot(True)
        self._update_timer.setInterval(250)
        self._update_timer.timeout.connect(self._maybe_update_predictions)
        self.autosave = QTimer(self)
        self.autosave.setInterval(AUTOSAVE_MS)
        self.autosave.timeout.connect(self.autosave_now)
        self.autosave.start()

        self.resize(1400, 860)
        # A full garbage collection walks every Python object (~0.3 s with torch and Qt loaded) while
        # holding the GIL, freezing the window. Objects alive now are long-lived: exclude them.
        gc.freeze()
        self._sync_run_controls()
        self._update_title()
        self._on_busy(False)

    # ------------------------------------------------------------------ construction
    def _act(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _make_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.a_new = self._act("&New project", self.new_project, K.New)
        self.a_open = self._act("&Open project\u2026", self.open_project_dialog, K.Open)
        self.a_save = self._act("&Save project", self.save, K.Save)
        self.a_save_as = self._act("Save project &as\u2026", self.save_as, "Ctrl+Shift+S")
        self.a_query = self._act("Choose &query folder\u2026", self.choose_query_folder, "Ctrl+Shift+O",
                                 "The folder of images to label")
        self.a_export = self._act("&Export CSV\u2026", self.export_csv_dialog, "Ctrl+E")
        self.a_export_dirs = self._act("Export into class &folders\u2026", self.export_folders_dialog, "Ctrl+Shift+E")
        self.a_quit = self._act("&Quit", self.close, K.Quit)
        self.a_undo = self.undo.createUndoAction(self, "&Undo")
        self.a_undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.a_redo = self.undo.createRedoAction(self, "&Redo")
        self.a_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.addAction(self.a_undo)
        self.addAction(self.a_redo)
        self.a_label = self._act("&Label", self.label, "Ctrl+L", "Label the query folder from the examples")
        self.a_cancel = self._act("Cancel", self.controller.cancel, "Esc", "Stop the running job")
        self.a_accept = self._act("&Accept predictions", lambda: self.accept(self.grid.selected_items()), None,
                                  "Confirm the predicted class of the selected images (Enter)")
        self.a_add_corr = QAction("Add corrections to examples", self, checkable=True)
        self.a_add_corr.setToolTip("When you correct an image, also add it to the examples of its class")
        self.a_add_corr.setChecked(self.settings.add_corrections)
        self.a_add_corr.toggled.connect(lambda v: setattr(self.settings, "add_corrections", v))
        self.a_find = self._act("&Find\u2026", lambda: (self.grid.find.setFocus(), self.grid.find.selectAll()), K.Find)
        self.a_select_all = self._act("Select &all", lambda: self.grid.view.selectAll(), K.SelectAll)
        self.a_settings = self._act("Se&ttings\u2026", self.open_settings, "Ctrl+,")
        self.a_help = self._act("&Keyboard shortcuts", lambda: HelpDialog(self).exec(), K.HelpContents)
        self.a_about = self._act("&About", self.about)
        self.a_review = self._act("Review queue", lambda: self.grid.set_sort("review"), None,
                                  "Sort by confidence, lowest first")

    def _make_toolbar(self) -> None:
        tb = QToolBar("Run")
        tb.setObjectName("run_toolbar")
        tb.setMovable(False)
        tb.addAction(self.a_query)
        self.query_label = QLabel()
        self.query_label.setMinimumWidth(120)
        tb.addWidget(self.query_label)
        tb.addSeparator()
        tb.addWidget(QLabel(" Model: "))
        self.backbone_box = QComboBox()
        self.backbone_box.setMinimumWidth(170)
        self.backbone_box.setToolTip("Feature extractor: built-in, torchvision, or a model file")
        tb.addWidget(self.backbone_box)
        tb.addWidget(QLabel(" Method: "))
        self.method_box = QComboBox()
        tb.addWidget(self.method_box)
        self.label_button = QPushButton("Label")
        self.label_button.setDefault(True)
        self.label_button.setToolTip("Label the query folder (Ctrl+L)")
        self.label_button.clicked.connect(self.label)
        tb.addWidget(self.label_button)
        tb.addSeparator()
        tb.addAction(self.a_review)
        tb.addAction(self.a_accept)
        tb.addAction(self.a_add_corr)
        tb.addSeparator()
        tb.addAction(self.a_undo)
        tb.addAction(self.a_redo)
        tb.addAction(self.a_export)
        self.addToolBar(tb)
        self._fill_model_boxes()
        self.backbone_box.activated.connect(self._on_backbone)
        self.method_box.activated.connect(self._on_method)

    def _make_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        f.addActions([self.a_new, self.a_open])
        self.recent_menu = f.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        f.addActions([self.a_save, self.a_save_as])
        f.addSeparator()
        f.addAction(self.a_query)
        f.addSeparator()
        f.addActions([self.a_export, self.a_export_dirs])
        f.addSeparator()
        f.addAction(self.a_quit)
        e = mb.addMenu("&Edit")
        e.addActions([self.a_undo, self.a_redo])
        e.addSeparator()
        e.addActions([self.a_select_all, self.a_find])
        e.addSeparator()
        e.addAction(self.a_settings)
        lab = mb.addMenu("&Labels")
        lab.addActions([self.a_label, self.a_cancel])
        lab.addSeparator()
        lab.addActions([self.a_accept, self.a_add_corr])
        lab.addSeparator()
        lab.addAction("Add class\u2026", self.classes.new_class)
        lab.addAction("New label set\u2026", self.classes.new_label_set)
        v = mb.addMenu("&View")
        g = QActionGroup(self)
        for key, text in SORTS:
            a = v.addAction(f"Sort: {text}", lambda _=False, k=key: self.grid.set_sort(k))
            g.addAction(a)
        v.addSeparator()
        v.addAction("Show uncertain only", lambda: self.grid.set_filter("uncertain"))
        v.addAction("Show failed only", lambda: self.grid.set_filter("failed"))
        v.addAction("Show all", lambda: self.grid.set_filter("all"))
        h = mb.addMenu("&Help")
        h.addActions([self.a_help, self.a_about])

    def _make_statusbar(self) -> None:
        sb = self.statusBar()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.time_left = QLabel()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; what is done is kept (Esc)")
        self.cancel_button.clicked.connect(self.controller.cancel)
        sb.addPermanentWidget(self.time_left)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)

    def _fill_model_boxes(self) -> None:
        from fewshot_gui.core.fewshot import available_methods

        self.backbone_box.clear()
        try:
            from fewshot_gui.core.embed.backbones import list_backbones

            infos = list_backbones()
        except Exception:
            infos = []
        for info in infos:
            self.backbone_box.addItem(info.name if info.weights_available else f"{info.name} (no weights)", info.name)
            if not info.weights_available:
                self.backbone_box.setItemData(self.backbone_box.count() - 1,
                                              f"Weights not found: {info.source}", Qt.ItemDataRole.ToolTipRole)
        self.backbone_box.addItem("Model file\u2026", "__file__")
        self.method_box.clear()
        for m in available_methods():
            self.method_box.addItem(m, m)

    def _sync_run_controls(self) -> None:
        p = self.doc.project
        if p.model_file is not None:
            k = self.backbone_box.findData(f"file:{p.model_file}")
            if k < 0:
                self.backbone_box.insertItem(self.backbone_box.count() - 1, p.model_file.name, f"file:{p.model_file}")
                k = self.backbone_box.findData(f"file:{p.model_file}")
        else:
            k = self.backbone_box.findData(p.backbone)
            if k < 0:
                self.backbone_box.insertItem(0, p.backbone, p.backbone)
                k = 0
        self.backbone_box.setCurrentIndex(k)
        k = self.method_box.findData(p.method)
        if k < 0:
            self.method_box.addItem(p.method, p.method)
            k = self.method_box.findData(p.method)
        self.method_box.setCurrentIndex(k)
        q = p.query_folder
        self.query_label.setText(f" {q.name}/ " if q else " no query folder ")
        self.query_label.setToolTip(str(q) if q else "Choose the folder of images to label")

    # ------------------------------------------------------------------ messages
    def status(self, text: str) -> None:
        self.statusBar().showMessage(text, 15000)

    def show_error(self, text: str) -> None:
        self.status(text)
        if getattr(self, "quiet_errors", False):
            self.last_error = text
            return
        QMessageBox.warning(self, "fewshot-gui", text)

    def _on_clean_changed(self, _v: bool) -> None:
        self._update_title()

    def _update_title(self) -> None:
        p = self.doc.project
        name = p.path.name if p.path else "Untitled project"
        dirty = self.doc.dirty or not self.undo.isClean()
        self.setWindowTitle(f"{name}{' *' if dirty else ''} \u2014 [{p.active_label_set}] \u2014 fewshot-gui")

    # ------------------------------------------------------------------ running
    def _on_busy(self, busy: bool) -> None:
        # fewer thumbnail threads while a job decodes and embeds: less contention for the GIL
        self.thumbs.loader.pool.setMaxThreadCount(1 if busy else 2)
        self.label_button.setEnabled(not busy)
        self.a_label.setEnabled(not busy)
        self.a_cancel.setEnabled(busy)
        self.cancel_button.setVisible(busy)
        self.progress.setVisible(busy)
        self.time_left.setVisible(busy)
        self.backbone_box.setEnabled(not busy)
        self.method_box.setEnabled(not busy)
        if not busy:
            self.progress.reset()
            self.time_left.clear()
            if not self._update_timer.isActive() and self.doc.features is not None and (
                    self.doc.state is None or self.doc.state.stale or self.doc.missing_support_features()):
                self._update_timer.start()

    def _on_progress(self, text: str, fraction: float, left: str) -> None:
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        self.progress.setFormat(text)
        self.time_left.setText(left)

    def label(self) -> bool:
        return self.controller.label()

    def _on_labeled(self, result) -> None:
        notes = getattr(result, "notes", [])
        if notes:
            self.status(notes[0])

    def _schedule_update(self) -> None:
        self._update_timer.start()

    def _maybe_update_predictions(self) -> None:
        """After class/support edits: embed new examples (worker) and re-predict from cached features."""
        if self.controller.busy() or self.doc.features is None:
            return
        st = self.doc.state
        if st is None or st.stale or self.doc.missing_support_features():
            if st is not None:
                st.stale = False
            if self.doc.can_repredict():
                self.controller.update_predictions()

    def _on_backbone(self, k: int) -> None:
        data = self.backbone_box.itemData(k)
        p = self.doc.project
        if data == "__file__":
            f, _ = QFileDialog.getOpenFileName(self, "Choose a model file", "", "Model files (*.safetensors *.fsm);;All files (*)")
            if f:
                p.model_file = Path(f).resolve()
            self._sync_run_controls()
        elif isinstance(data, str) and data.startswith("file:"):
            p.model_file = Path(data[5:])
        else:
            p.model_file = None
            p.backbone = data
        self.doc.features = None
        self.doc.method_factory = None
        self.doc.set_dirty()

    def _on_method(self, _k: int) -> None:
        self.doc.project.method = self.method_box.currentData()
        self.doc.set_dirty()
        if self.doc.features is not None and self.doc.method_factory is not None:
            from fewshot_gui.core.fewshot import get_method

            name = self.doc.project.method
            try:
                if get_method(name).input_kind == "features":
                    self.doc.method_factory = lambda: get_method(name)
                    self.doc.repredict()
                    return
            except FewShotError:
                pass
            self.doc.method_factory = None
            self.status(f"Press Label to label with {name}.")

    # ------------------------------------------------------------------ review
    def assign(self, items: list[int], name: str | None) -> None:
        if not items:
            return
        add = self.a_add_corr.isChecked() and name is not None
        self.undo.push(cmd.AssignLabels(self.doc, items, [name] * len(items), add_to_support=add))
        self.status(f"{len(items)} image{'s' if len(items) != 1 else ''} "
                    + (f"labeled {name}" if name else "cleared") + " \u2014 Ctrl+Z to undo")

    def accept(self, items: list[int]) -> None:
        a = self.doc.arrays()
        keep = [i for i in items if a.pred[i] >= 0 and a.confirmed[i] < 0]
        if not keep:
            return
        labels = [self.doc.class_names[a.pred[i]] for i in keep]
        self.undo.push(cmd.AssignLabels(self.doc, keep, labels,
                                        text=f"Accept {len(keep)} prediction{'s' if len(keep) != 1 else ''}"))

    def add_items_to_support(self, items: list[int], name: str) -> None:
        self.undo.push(cmd.AddSupport(self.doc, name, [self.doc.paths[i] for i in items]))

    def switch_label_set(self, name: str) -> None:
        if self.controller.busy():
            self.show_error("A job is running; wait for it or cancel it before switching label sets.")
            self.classes.rebuild()
            return
        self.undo.clear()
        self.doc.switch_label_set(name)
        if self.doc.state is None and self.doc.features is not None:
            self.controller.update_predictions()
        self._update_title()

    # ------------------------------------------------------------------ projects
    def _on_project_reset(self) -> None:
        self._sync_run_controls()
        self._update_title()

    def maybe_save(self) -> bool:
        """Ask to save unsaved changes. False when the user cancels."""
        if not self.ask_on_close or not (self.doc.dirty or not self.undo.isClean()):
            return True
        r = QMessageBox.question(self, "Unsaved changes", "Save the changes to this project?",
                                 QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                                 | QMessageBox.StandardButton.Cancel)
        if r == QMessageBox.StandardButton.Cancel:
            return False
        if r == QMessageBox.StandardButton.Save:
            return self.save()
        return True

    def set_project(self, project: Project) -> None:
        if self.controller.busy():
            self.controller.cancel()
            self.controller.runner.wait(10000)
        self.undo.clear()
        self.thumbs.clear()
        self.doc.set_project(project)
        self.undo.setClean()
        if "threshold" in project.settings:
            self.grid.set_threshold(float(project.settings["threshold"]))
        if project.query_folder is not None:
            if project.query_folder.is_dir():
                self.controller.scan(project.query_folder)
            else:
                self.show_error(f"The query folder {project.query_folder} does not exist any more; "
                                "choose it again (File \u25b8 Choose query folder).")

    def new_project(self) -> None:
        if not self.maybe_save():
            return
        p = Project(backbone=self.settings.default_backbone)
        self.set_project(p)

    def open_project_dialog(self) -> None:
        if not self.maybe_save():
            return
        f, _ = QFileDialog.getOpenFileName(self, "Open project", "", PROJECT_FILTER)
        if f:
            self.open_project(Path(f))

    def open_project(self, path: Path) -> bool:
        try:
            p = Project.load(path)
        except FewShotError as exc:
            self.show_error(str(exc))
            return False
        self.set_project(p)
        self.settings.add_recent(str(p.path))
        self.status(f"Opened {p.path}")
        return True

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for r in self.settings.recent:
            self.recent_menu.addAction(r, lambda _=False, path=r: self.maybe_save() and self.open_project(Path(path)))
        if not self.settings.recent:
            self.recent_menu.addAction("(none)").setEnabled(False)

    def save(self) -> bool:
        if self.doc.project.path is None:
            return self.save_as()
        return self.save_to(self.doc.project.path)

    def save_as(self) -> bool:
        start = str(self.doc.project.path or (Path.home() / f"labels{SUFFIX}"))
        f, _ = QFileDialog.getSaveFileName(self, "Save project as", start, PROJECT_FILTER)
        if not f:
            return False
        if not f.endswith(".json"):
            f += SUFFIX
        return self.save_to(Path(f))

    def save_to(self, path: Path) -> bool:
        self.doc.project.settings["threshold"] = self.grid.model.threshold
        try:
            saved = self.doc.project.save(path)
        except FewShotError as exc:
            self.show_error(str(exc))
            return False
        self.doc.set_dirty(False)
        self.undo.setClean()
        self.settings.add_recent(str(saved))
        self._update_title()
        self.status(f"Saved {saved}")
        return True

    def autosave_now(self) -> None:
        if self.doc.project.path is not None and (self.doc.dirty or not self.undo.isClean()):
            try:
                self.doc.project.save()
                self.doc.set_dirty(False)
                self.undo.setClean()
                self.status(f"Autosaved {self.doc.project.path.name}")
            except FewShotError as exc:
                self.status(f"Autosave failed: {exc}")

    def choose_query_folder(self) -> None:
        start = str(self.doc.project.query_folder or Path.home())
        d = QFileDialog.getExistingDirectory(self, "Choose the folder of images to label", start)
        if d:
            self.set_query_folder(Path(d))

    def set_query_folder(self, folder: Path) -> bool:
        if self.controller.busy():
            self.show_error("A job is running; cancel it first.")
            return False
        folder = folder.resolve()
        self.doc.project.query_folder = folder
        self.doc.set_dirty()
        self.thumbs.clear()
        self._sync_run_controls()
        return self.controller.scan(folder)

    # ------------------------------------------------------------------ export
    def export_csv_dialog(self) -> None:
        if self.doc.state is None:
            self.show_error("Nothing to export yet: label the query folder first.")
            return
        start = str((self.doc.project.path.with_suffix("").with_suffix(".csv")) if self.doc.project.path
                    else Path.home() / "labels.csv")
        f, _ = QFileDialog.getSaveFileName(self, "Export CSV", start, "CSV files (*.csv)")
        if f:
            self.export_csv(Path(f), show_summary=True)

    def export_csv(self, path: Path, show_summary: bool = False) -> Path | None:
        from fewshot_gui.gui.exporting import export_csv

        try:
            out, counts, notes = export_csv(self.doc, path)
        except FewShotError as exc:
            self.show_error(str(exc))
            return None
        self.status(f"Wrote {out}")
        if show_summary:
            SummaryDialog("CSV exported", f"Wrote {out}", counts, notes, self).exec()
        return out

    def export_folders_dialog(self) -> None:
        from fewshot_gui.gui.exporting import export_folders

        if self.doc.state is None:
            self.show_error("Nothing to export yet: label the query folder first.")
            return
        d = QFileDialog.getExistingDirectory(self, "Export into class folders under\u2026", str(Path.home()))
        if not d:
            return
        dlg = ExportFoldersDialog(d, self)
        if not dlg.exec():
            return
        try:
            counts, notes = export_folders(self.doc, Path(d), dlg.mode)
        except FewShotError as exc:
            self.show_error(str(exc))
            return
        SummaryDialog("Exported", f"{'Copied' if dlg.mode == 'copy' else 'Linked'} {sum(n for _, n in counts):,} "
                      f"images into {d}", counts, notes, self).exec()

    # ------------------------------------------------------------------ misc
    def open_settings(self) -> None:
        names = [self.backbone_box.itemData(k) for k in range(self.backbone_box.count())
                 if isinstance(self.backbone_box.itemData(k), str) and not self.backbone_box.itemData(k).startswith(("file:", "__"))]
        dlg = SettingsDialog(self.settings, names, self)
        if dlg.exec():
            dlg.apply()
            self.grid.set_thumb_size(self.settings.thumb_size)
            self.grid.set_threshold(self.settings.threshold)
            self.controller.models.spec = None  # device may have changed

    def about(self) -> None:
        QMessageBox.about(self, "About fewshot-gui",
                          "fewshot-gui labels a folder of images from a few examples per class "
                          "(Prototypical Networks, MAML, Relation Networks).")

    def closeEvent(self, e) -> None:
        if not self.maybe_save():
            e.ignore()
            return
        self.shutdown()
        e.accept()

    def shutdown(self) -> None:
        """Stop every background job and thumbnail thread (idempotent)."""
        self.autosave.stop()
        self.controller.shutdown()
        self.thumbs.shutdown()
        self.settings.threshold = self.grid.model.threshold
        self.settings.sync()
