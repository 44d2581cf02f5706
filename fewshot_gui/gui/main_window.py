"""The main window: the panels, the run toolbar, the menus and the status bar put together.

Labeling state and logic live in the session behind :class:`~.document.Document`; jobs run
through :class:`~.controller.LabelController`. The window turns user actions into undoable
commands, dialogs and calls to those two.

Autosave writes a recovery file (:mod:`.recovery`), never the project file; a recovery file left
by a crash is offered when its project is opened (or, for a never-saved project, at the next
start). Closing during a job shows "Stopping..." and closes once the job has stopped (the window
is hidden after :data:`CLOSE_GRACE_MS` if the job takes longer).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QElapsedTimer, Qt, QTimer
from PySide6.QtGui import QUndoStack
from PySide6.QtWidgets import QApplication, QFileDialog, QMainWindow, QMessageBox, QSplitter

from fewshot_gui.core.embed.cache import default_cache_dir
from fewshot_gui.core.errors import FewShotError, WriteError
from fewshot_gui.core.session.project import SUFFIX, Project
from fewshot_gui.gui import commands as cmd
from fewshot_gui.gui import recovery
from fewshot_gui.gui.classes_panel import ClassesPanel
from fewshot_gui.gui.controller import LabelController
from fewshot_gui.gui.details import DetailsPanel
from fewshot_gui.gui.dialogs import ExportFoldersDialog, HelpDialog, SettingsDialog, SummaryDialog
from fewshot_gui.gui.document import Document
from fewshot_gui.gui.exporting import export_csv, export_folders
from fewshot_gui.gui.grid import GridPanel
from fewshot_gui.gui.job_status import JobStatus
from fewshot_gui.gui.learn_dialog import LearnDialog
from fewshot_gui.gui.review_toolbar import add_review_toolbar
from fewshot_gui.gui.run_toolbar import RunToolbar
from fewshot_gui.gui.settings import AppSettings
from fewshot_gui.gui.thumbs import ThumbnailCache
from fewshot_gui.gui.window_actions import build_actions, build_menus

PROJECT_FILTER = f"Few-shot projects (*{SUFFIX});;JSON files (*.json);;All files (*)"
AUTOSAVE_MS = 60_000
AUTOSAVED = "Autosaved unsaved changes to {} (save to keep them in the project)"
CLOSE_GRACE_MS = 600     # closing during a job: hide the window if the job takes longer to stop
STOP_LIMIT_MS = 60_000   # ... and close anyway (waiting for the thread) after this long


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings | None = None, cache_dir: Path | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings or AppSettings()
        self.ask_on_close = True
        self.quiet_errors = False  # errors go to the status bar and last_error, not a dialog
        self.last_error = ""
        self.recovery = recovery.RecoveryFiles(recovery.default_recovery_folder(self.settings))
        orphan = self.recovery.orphan()  # a never-saved project's changes left by a crash
        self._recovery_offer: tuple[Path, bool] | None = (orphan, True) if orphan else None  # (file, untitled)
        self._closing = False  # the person closed the window during a job: close once it stopped
        self._hidden_to_close = False
        self._stop_clock = QElapsedTimer()
        self.doc = Document(self)
        self.doc.project.backbone = self.settings.default_backbone  # the first, untitled project
        self.undo = QUndoStack(self)
        thumb_root = None
        if self.settings.disk_thumbnails:
            thumb_root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "thumbnails"
        self.thumbs = ThumbnailCache(self, disk_root=thumb_root)
        self.controller = LabelController(self.doc, self.settings, cache_dir, self)

        self.classes = ClassesPanel(self.doc, self.thumbs, self.undo, self.assign)
        self.grid = GridPanel(self.doc, self.thumbs)
        self.details = DetailsPanel(self.doc, self.thumbs)
        split = QSplitter(Qt.Orientation.Horizontal)
        for k, panel in enumerate((self.classes, self.grid, self.details)):
            split.addWidget(panel)
            split.setStretchFactor(k, 1 if panel is self.grid else 0)
        split.setSizes([330, 760, 330])
        self.setCentralWidget(split)
        self.grid.set_thumb_size(self.settings.thumb_size)
        self.grid.set_threshold(self.settings.threshold)

        self.window_actions = build_actions(self)
        a = self.window_actions
        self.toolbar = RunToolbar(self)
        self.toolbar.add_items(a.query, [])
        self.addToolBar(self.toolbar)
        self.review_toolbar = add_review_toolbar(self, [a.review, a.accept, a.add_corrections, None, a.undo, a.redo,
                                                        a.export])
        self.label_button = self.toolbar.label_button
        self.recent_menu = build_menus(self, a)
        # the status line says what undo/redo did, so "... labeled ..." never outlives its undo
        a.undo.triggered.connect(lambda: self.status(f"Undone: {self.undo.text(self.undo.index())}"))
        a.redo.triggered.connect(lambda: self.status(f"Redone: {self.undo.text(self.undo.index() - 1)}"))
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.job_status = JobStatus(self.statusBar(), self.controller.cancel)
        self.cancel_button = self.job_status.cancel_button

        self.toolbar.labelRequested.connect(self.label)
        self.toolbar.backboneChosen.connect(lambda name: self._set_model(backbone=name))
        self.toolbar.modelFileChosen.connect(lambda path: self._set_model(model_file=path))
        self.toolbar.methodChosen.connect(self.doc.set_method)
        self.grid.currentItemChanged.connect(self.details.show_item)
        self.grid.assignRequested.connect(self.assign)
        self.grid.acceptRequested.connect(self.accept)
        self.grid.supportRequested.connect(self.add_items_to_support)
        self.classes.filterRequested.connect(lambda k: self.grid.set_filter("class", k))
        self.classes.labelSetRequested.connect(self.switch_label_set)
        self.classes.problem.connect(self.show_error)
        self.classes.message.connect(self.status)
        self.controller.busyChanged.connect(self._on_busy)
        self.controller.progress.connect(self.job_status.show_progress)
        self.controller.message.connect(self.status)
        self.controller.error.connect(self.show_error)
        self.controller.labeled.connect(self._on_labeled)
        self.controller.runner.idle.connect(self.classes.update_counts)
        self.doc.message.connect(self.status)
        self.doc.dirtyChanged.connect(self._update_title)
        self.doc.projectReset.connect(self._on_project_reset)
        self.undo.cleanChanged.connect(self._update_title)

        self.autosave = QTimer(self)
        self.autosave.setInterval(AUTOSAVE_MS)
        self.autosave.timeout.connect(self.autosave_in_background)
        self.autosave.start()
        self._stop_poll = QTimer(self)
        self._stop_poll.setInterval(20)
        self._stop_poll.timeout.connect(self._close_when_stopped)
        QTimer.singleShot(0, self.offer_recovery)
        self.resize(1400, 860)
        self._on_project_reset()
        self._on_busy(False)

    # ------------------------------------------------------------------ messages
    def status(self, text: str) -> None:
        if not self._closing:  # "Stopping..." stays until the window closes
            self.statusBar().showMessage(text, 15000)

    def show_error(self, text: str) -> None:
        self.status(text.splitlines()[0] if text else text)
        self.last_error = text
        if not self.quiet_errors:
            QMessageBox.warning(self, "fewshot-gui", text)

    def _update_title(self, *_args) -> None:
        p = self.doc.project
        name = p.path.name if p.path else "Untitled project"
        dirty = self.doc.dirty or not self.undo.isClean()
        self.setWindowTitle(f"{name}{' *' if dirty else ''} \u2014 [{p.active_label_set}] \u2014 fewshot-gui")

    def _on_project_reset(self) -> None:
        self.toolbar.sync(self.doc.project)
        self._update_title()

    # ------------------------------------------------------------------ running
    def _on_busy(self, busy: bool) -> None:
        # fewer thumbnail threads while a job decodes and embeds: less contention for the GIL
        self.thumbs.loader.pool.setMaxThreadCount(1 if busy else 2)
        self.toolbar.set_busy(busy)
        self.window_actions.label.setEnabled(not busy)
        self.window_actions.cancel.setEnabled(busy)
        self.job_status.set_busy(busy)

    def label(self) -> bool:
        return self.controller.label()

    def _on_labeled(self, result) -> None:
        if result.notes:
            self.status(result.notes[0])

    def _set_model(self, backbone: str | None = None, model_file: Path | None = None) -> None:
        self.doc.set_model(backbone=backbone, model_file=model_file)
        self.toolbar.sync(self.doc.project)

    # ------------------------------------------------------------------ review
    def assign(self, items: list[int], name: str | None) -> None:
        if not items:
            return
        add = self.window_actions.add_corrections.isChecked() and name is not None
        self.undo.push(cmd.AssignLabels(self.doc, items, [name] * len(items), add_to_support=add))
        self.status(f"{len(items)} image{'s' if len(items) != 1 else ''} "
                    + ("marked none of these" if name == cmd.UNKNOWN_LABEL else f"labeled {name}" if name
                       else "cleared") + " \u2014 Ctrl+Z to undo")

    def accept(self, items: list[int]) -> None:
        command = cmd.accept_predictions(self.doc, items)
        if command is not None:
            self.undo.push(command)

    def add_items_to_support(self, items: list[int], name: str) -> None:
        failed = [i for i in items if i in self.doc.errors]  # images that could not be read
        if failed:
            self.show_error(f"{len(failed)} of the images could not be read and were not added as examples: "
                            + ", ".join(self.doc.rel[i] for i in failed[:5]) + (" \u2026" if len(failed) > 5 else ""))
        keep = [self.doc.paths[i] for i in items if i not in self.doc.errors]
        if keep:
            self.undo.push(cmd.AddSupport(self.doc, name, keep))

    def switch_label_set(self, name: str) -> None:
        if self.controller.switch_label_set(name):
            self.undo.clear()  # the undo steps edit the classes of the other label set
        else:
            self.classes.rebuild()  # show the label set still active
        self._update_title()

    # ------------------------------------------------------------------ projects
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
        if self.maybe_save():
            self.recovery.forget(self.doc.project.path)
            self.set_project(Project(backbone=self.settings.default_backbone))

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
        if self.doc.project.path != p.path:
            self.recovery.forget(self.doc.project.path)  # the person was asked about its changes
        self.set_project(p)
        rec = self.recovery.beside(p.path)
        self._recovery_offer = (rec, False) if rec is not None else None
        if rec is not None:
            QTimer.singleShot(0, self.offer_recovery)  # once the window shows (and the event loop runs)
        self.settings.add_recent(str(p.path))
        self.status(f"Opened {p.path}")
        if p.warnings:  # entries of the file that could not be used and were left out
            more = [f"... and {len(p.warnings) - 10} more"] if len(p.warnings) > 10 else []
            self.show_error("Opened the project without these entries:\n" + "\n".join(p.warnings[:10] + more))
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
        """Save to ``path``: a snapshot here, JSON and atomic write on the file thread (True once started)."""
        self.doc.project.settings["threshold"] = self.grid.model.threshold
        before = self.doc.project.path
        self.status(f"Saving {Path(path).name}\u2026")

        def done(outcome) -> None:
            if outcome.error is not None:
                self.show_error(outcome.error)
                return
            self.recovery.forget(before)
            self.recovery.forget(outcome.path)
            if not outcome.edited_since:
                self._saved()
            self.settings.add_recent(str(outcome.path))
            self.status(f"Saved {outcome.path}")

        self.doc.save_project(Path(path), done)
        return True

    def autosave_now(self) -> Path | None:
        """Write the recovery file of unsaved changes now; returns it (None: nothing new)."""
        if not (self.doc.dirty or not self.undo.isClean()):
            return None
        self.doc.project.settings["threshold"] = self.grid.model.threshold
        try:
            written = self.recovery.write(self.doc.project)
        except (WriteError, OSError) as exc:
            self.status(f"Autosave failed: {exc}")
            return None
        if written is not None:
            self.status(AUTOSAVED.format(written.name))
        return written

    def autosave_in_background(self) -> None:
        """The autosave timer: the recovery file is written from a snapshot on the file thread."""
        if not (self.doc.dirty or not self.undo.isClean()) or self.doc.saving:
            return
        self.doc.project.settings["threshold"] = self.grid.model.threshold
        snapshot = self.doc.project.snapshot()

        def done(written, exc) -> None:
            if exc is not None:
                self.status(f"Autosave failed: {exc}")
            elif written is not None:
                self.status(AUTOSAVED.format(written.name))

        self.doc.write_in_background(lambda: self.recovery.write(snapshot), done)

    def offer_recovery(self) -> None:
        """Offer the recovery file found at start-up or when the project was opened: restore its
        changes (the project stays unsaved) or discard it. Nobody is asked while errors are quiet
        (a screenshot run): the file is left for the next open."""
        offer, self._recovery_offer = self._recovery_offer, None
        if offer is None or self.quiet_errors or self._closing or not offer[0].is_file():
            return
        rec, untitled = offer
        if untitled and (self.doc.project.path is not None or self.doc.dirty or self.doc.classes):
            return  # an untitled project's changes; this window already shows another project
        try:
            recovered = Project.load(rec)
        except FewShotError as exc:
            self.show_error(f"The recovery file {rec} cannot be read ({exc}); it was left as it is.")
            return
        original = None if untitled else self.doc.project.path
        recovered.path = original
        if not untitled and recovered == self.doc.project:
            rec.unlink(missing_ok=True)  # nothing was lost
            return
        if not recovery.ask_restore(self, recovery.describe(rec, original)):
            rec.unlink(missing_ok=True)
            self.status(f"Discarded the recovery file {rec.name}")
            return
        self.set_project(recovered)
        self.doc.set_dirty(True)
        if untitled:
            self.autosave_now()  # this window's own recovery file, then the old one goes
            rec.unlink(missing_ok=True)
        self.status("Restored the unsaved changes; save the project to keep them")

    def _saved(self) -> None:
        self.doc.set_dirty(False)
        self.undo.setClean()
        self._update_title()

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
        self.toolbar.sync(self.doc.project)
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
        try:
            out, counts, notes = export_csv(self.doc.session, path)
        except FewShotError as exc:
            self.show_error(str(exc))
            return None
        self.status(f"Wrote {out}")
        if show_summary:
            SummaryDialog("CSV exported", f"Wrote {out}", counts, notes, self).exec()
        return out

    def export_folders_dialog(self) -> None:
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
            counts, notes = export_folders(self.doc.session, Path(d), dlg.mode, dlg.unknown_folder)
        except FewShotError as exc:
            self.show_error(str(exc))
            return
        SummaryDialog("Exported", f"{'Copied' if dlg.mode == 'copy' else 'Linked'} {sum(n for _, n in counts):,} "
                      f"images into {d}", counts, notes, self).exec()

    # ------------------------------------------------------------------ misc
    def open_settings(self) -> None:
        dlg = SettingsDialog(self.settings, self.toolbar.backbone_names(), self)
        if dlg.exec():
            dlg.apply()
            self.grid.set_thumb_size(self.settings.thumb_size)
            self.grid.set_threshold(self.settings.threshold)
            self.controller.forget_model()  # the device may have changed

    def learn_from_project(self) -> None:
        """Labels > Learn from this project (:mod:`fewshot_gui.gui.learn_dialog`)."""
        LearnDialog(self.doc.project, self.controller.cache_dir,
                    lambda path: self._set_model(model_file=Path(path)), self).exec()

    def show_help(self) -> None:
        HelpDialog(self).exec()

    def about(self) -> None:
        QMessageBox.about(self, "About fewshot-gui",
                          "fewshot-gui labels a folder of images from a few examples per class "
                          "(Prototypical Networks, MAML, Relation Networks).")

    def closeEvent(self, e) -> None:
        if self._closing and self.controller.jobs_running():
            e.ignore()  # already stopping: the window closes when the job has stopped
            return
        if not self._closing and not self.maybe_save():
            e.ignore()
            return
        if self.controller.jobs_running():
            e.ignore()
            self._stop_then_close()
            return
        self.shutdown()
        self.recovery.forget(self.doc.project.path)
        e.accept()
        if self._hidden_to_close and QApplication.quitOnLastWindowClosed() and not any(
                w.isVisible() for w in QApplication.topLevelWidgets()):
            QApplication.quit()  # a hidden window's close does not end the app by itself

    def _stop_then_close(self) -> None:
        """Cancel the jobs, say "Stopping..." and close once they stopped (polled)."""
        self._closing = True
        self.autosave.stop()
        self.controller.stop()
        for w in (self.centralWidget(), self.toolbar, self.menuBar()):
            w.setEnabled(False)
        self.statusBar().showMessage("Stopping\u2026")
        self._stop_clock.start()
        self._stop_poll.start()

    def _close_when_stopped(self) -> None:
        elapsed = self._stop_clock.elapsed()
        if self.controller.jobs_running() and elapsed < STOP_LIMIT_MS:
            if elapsed >= CLOSE_GRACE_MS and self.isVisible():
                self._hidden_to_close = True
                self.hide()  # gone for the person; the process ends when the job has stopped
            return
        self._stop_poll.stop()
        self.close()

    def shutdown(self) -> None:
        """Stop every background job and thumbnail thread, waiting for them (idempotent)."""
        self.autosave.stop()
        self._stop_poll.stop()
        self.doc.wait_for_files()  # a save pressed just before closing is finished, not lost
        self.controller.shutdown()
        self.thumbs.shutdown()
        self.settings.threshold = self.grid.model.threshold
        self.settings.sync()
