"""Guards against a Qt binding that corrupts reference counts.

PySide6 6.12.0 loses a reference to the value returned by ``Signal.emit()`` (True/False) and to
``None`` returned by Python overrides called from C++ (``QRunnable.run``), so a busy app dies
after a few thousand signals with "Fatal Python error: bool_dealloc". The app needs a binding
where these stay balanced (6.11.3 is).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")


def test_signal_emit_keeps_refcounts_balanced(qapp):
    from PySide6.QtCore import QObject, Signal

    class S(QObject):
        sig = Signal(int)

    s = S()
    got = []
    s.sig.connect(got.append)
    before_t, before_f, before_n = sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None)
    for i in range(200):
        s.sig.emit(i)
    assert len(got) == 200
    drift = [sys.getrefcount(True) - before_t, sys.getrefcount(False) - before_f, sys.getrefcount(None) - before_n]
    assert all(abs(d) < 50 for d in drift), f"PySide6 refcount bug (drift {drift}); install another PySide6 version"
