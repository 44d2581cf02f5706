"""Model files: round trip, and nothing that could run code is ever loaded."""

import os
import pickle

import numpy as np
import pytest
import torch

from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file, save_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_round_trip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": np.array([1, 2, 3], np.int64),
               "scalar": torch.tensor(2.5), "flag": np.array([True, False])}
    meta = {"format": "fewshot-model", "method": "protonet", "nested": {"x": [1, 2]}, "text": "ü ∑"}
    p = tmp_path / "m.fsm"
    save_model(p, tensors, meta)
    meta2, t2 = read_model_file(p)
    assert meta2 == meta
    assert set(t2) == set(tensors)
    np.testing.assert_array_equal(t2["a"], tensors["a"].numpy())
    np.testing.assert_array_equal(t2["b"], tensors["b"])
    assert t2["scalar"].shape == () and float(t2["scalar"]) == 2.5
    assert t2["flag"].dtype == np.bool_
    b = load_model(p)
    assert b.meta["method"] == "protonet" and b.digest


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_crafted_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.fsm"
    p.write_bytes(pickle.dumps({"weights": _Evil(marker)}))
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(p)
    assert not marker.exists()


def test_torch_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil(marker)}, p)
    with pytest.raises(ModelFileError):
        load_model(p)
    assert not marker.exists()


def test_pickle_disguised_after_magic_is_refused(tmp_path):
    # the right magic but a header that is not JSON (e.g. a pickle) -> corrupt, never unpickled
    marker = tmp_path / "pwned3"
    p = tmp_path / "evil2.fsm"
    payload = pickle.dumps(_Evil(marker))
    p.write_bytes(b"FEWSHOTM" + (1).to_bytes(4, "little") + len(payload).to_bytes(8, "little") + payload)
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(p)
    assert not marker.exists()


def test_truncated_and_tampered_files(tmp_path):
    p = tmp_path / "m.fsm"
    save_model(p, {"w": torch.ones(100)}, {"format": "fewshot-model"})
    data = p.read_bytes()
    (tmp_path / "trunc.fsm").write_bytes(data[:-8])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(tmp_path / "trunc.fsm")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.fsm")
    (tmp_path / "empty.fsm").write_bytes(b"")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "empty.fsm")


def test_metadata_must_describe_a_model(tmp_path):
    p = tmp_path / "c.fsm"
    save_model(p, {}, {"format": "fewshot-checkpoint"})
    with pytest.raises(ModelFileError, match="fewshot model"):
        load_model(p)
