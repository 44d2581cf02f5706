"""The grid's query model on hand-made arrays (no labeling run, no main window): sort orders,
filters, the find text, and the drag payload."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from fewshot_gui.core.session.view import ViewArrays  # noqa: E402
from fewshot_gui.gui.query_model import ITEM_ROLE, QueryModel, items_from_mime  # noqa: E402


class FakeDocument:
    """What the query model reads of a document: five images, two classes.

    0 a/cat1.png   predicted cat 0.9
    1 a/cat2.png   predicted cat 0.4   (uncertain)
    2 b/dog1.png   confirmed dog
    3 b/bad.png    failed
    4 b/dog2.png   predicted dog 0.7, unknown
    """

    class_names = ["cat", "dog"]

    def __init__(self):
        self.rel = ["a/cat1.png", "a/cat2.png", "b/dog1.png", "b/bad.png", "b/dog2.png"]
        self.paths = [Path("/q") / r for r in self.rel]
        self.errors = {3: "not an image"}
        self._arrays = ViewArrays(
            pred=np.array([0, 0, 1, -1, 1], np.int32),
            conf=np.array([0.9, 0.4, 0.8, np.nan, 0.7], np.float32),
            confirmed=np.array([-1, -1, 1, -1, -1], np.int32),
            failed=np.array([False, False, False, True, False]),
            done=np.ones(5, bool),
            unknown=np.array([False, False, False, False, True]),
            rank=np.zeros(5, int),
        )

    def arrays(self) -> ViewArrays:
        return self._arrays


def rows(model: QueryModel) -> list[int]:
    return [model.item_at(r) for r in range(model.rowCount())]


@pytest.fixture
def model(qapp):
    m = QueryModel(FakeDocument())
    m.reset_all()
    return m


def test_sort_orders(model):
    assert rows(model) == [0, 1, 2, 3, 4]
    model.sort_key = "review"  # labeled and unconfirmed by rising confidence, then confirmed, then failed
    model.refresh()
    assert rows(model) == [1, 4, 0, 2, 3]
    model.sort_key = "confidence"
    model.refresh()
    assert rows(model) == [0, 4, 1, 2, 3]
    model.sort_key = "class"  # by class, most confident (confirmed) first; failed last
    model.refresh()
    assert rows(model) == [0, 1, 2, 4, 3]


def test_filters_and_find_text(model):
    for kind, k, expected in [("uncertain", -1, [1]), ("unconfirmed", -1, [0, 1, 4]), ("confirmed", -1, [2]),
                              ("unknown", -1, [4]), ("failed", -1, [3]), ("class", 1, [2, 4])]:
        model.filter = (kind, k)
        model.refresh()
        assert rows(model) == expected, kind
    model.filter = ("all", -1)
    model.find_text = "B/DOG"
    model.refresh()
    assert rows(model) == [2, 4]
    assert model.row_of(4) == 1 and model.row_of(0) == -1
    assert model.uncertain_count() == 1


def test_find_text_leaves_the_document_arrays_alone(model):
    doc = model.doc
    before = {k: v.copy() for k, v in vars(doc.arrays()).items()}
    for kind in ("failed", "unknown", "uncertain", "confirmed"):
        model.filter = (kind, -1)
        model.find_text = "cat"
        model.refresh()
    after = vars(doc.arrays())
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)


def test_drag_payload_round_trip(model):
    md = model.mimeData([model.index(4), model.index(1)])
    assert items_from_mime(md) == [1, 4]
    assert [u.toLocalFile() for u in md.urls()] == ["/q/a/cat2.png", "/q/b/dog2.png"]


def test_a_resort_moves_rows_without_a_layout_signal_and_a_filter_resets(model):
    signals = []
    for name in ("layoutChanged", "modelReset", "rowsMoved_"):
        getattr(model, name).connect(lambda *_, name=name: signals.append(name))
    assert model.refresh() == "same" and signals == []
    model.sort_key = "confidence"
    assert model.refresh() == "moved" and signals == ["rowsMoved_"]  # the view only repaints
    assert rows(model) == [0, 4, 1, 2, 3] and [model.row_of(i) for i in range(5)] == [0, 2, 3, 4, 1]
    assert model.data(model.index(1), ITEM_ROLE) == 4  # each row shows its new image
    model.filter = ("failed", -1)
    assert model.refresh() == "reset" and signals[-1] == "modelReset" and rows(model) == [3]
    assert model.rowCount() == 1 and not model.index(1).isValid()


def test_the_sort_keys_order_like_the_several_key_sort_they_stand_for(qapp):
    """group, then confidence (then folder order) for "review", "confidence" and "class", on many
    random images with ties."""
    doc = FakeDocument()
    rng = np.random.default_rng(1)
    n = 2000
    doc.rel = [f"x{i}.png" for i in range(n)]
    doc.paths = [Path("/q") / r for r in doc.rel]
    doc.errors = {}
    conf = rng.choice([0.3, 0.5, 0.7, 0.95], size=n).astype(np.float32)  # many ties
    failed = rng.random(n) < 0.05
    doc._arrays = ViewArrays(pred=rng.integers(0, 2, n).astype(np.int32), conf=np.where(failed, np.nan, conf),
                             confirmed=np.where(rng.random(n) < 0.1, 1, -1).astype(np.int32), failed=failed,
                             done=rng.random(n) < 0.9, unknown=np.zeros(n, bool), rank=np.zeros(n, int))
    a = doc._arrays
    m = QueryModel(doc)
    idx = np.arange(n)
    c = np.where(a.reviewed, 2.0, np.nan_to_num(a.conf, nan=1.5))
    group = np.where(a.failed, 3, np.where(a.reviewed, 2, np.where(a.done, 0, 1)))
    lab = np.where(a.label < 0, 1 << 20, a.label)
    want = {"review": np.lexsort((idx, c, group)), "confidence": np.lexsort((idx, -c, group)),
            "class": np.lexsort((idx, -c, lab))}
    for key, order in want.items():
        m.sort_key = key
        m.reset_all()
        assert rows(m) == order.tolist(), key
