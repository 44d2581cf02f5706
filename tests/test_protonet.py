"""ProtoNet: hand-computed examples, probabilities, streaming == whole-set, errors."""

import math

import numpy as np
import pytest

from fewshot_gui.core.errors import DataError
from fewshot_gui.core.fewshot import available_methods, get_method
from fewshot_gui.core.fewshot.protonet import ProtoNet


def _softmax2(a, b):
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb), eb / (ea + eb)


def test_registered():
    assert "protonet" in available_methods()
    m = get_method("protonet", scale=3.0)
    assert isinstance(m, ProtoNet) and m.input_kind == "features" and m.scale == 3.0


def test_hand_example_raw_features():
    # class 0: (2,0), (4,0) -> prototype (3,0); class 1: (0,2) -> prototype (0,2)
    s = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 2.0]])
    y = np.array([0, 0, 1])
    m = ProtoNet(normalize="none", scale=1.0).fit(s, y, 2)
    np.testing.assert_allclose(m.prototypes, [[3.0, 0.0], [0.0, 2.0]])
    q = np.array([[1.0, 1.0]])
    # squared distances: to (3,0): 4+1 = 5; to (0,2): 1+1 = 2
    np.testing.assert_allclose(m.scores(q), [[-5.0, -2.0]])
    p0, p1 = _softmax2(-5.0, -2.0)
    np.testing.assert_allclose(m.predict_proba(q), [[p0, p1]], rtol=1e-12)
    pred = m.predict(q)
    assert pred.label.tolist() == [1]
    assert pred.confidence[0] == pytest.approx(p1)
    assert pred.margin[0] == pytest.approx(p1 - p0)


def test_hand_example_center_l2():
    # support (3,1) -> class 0, (1,3) -> class 1; support mean (2,2)
    # centred: (1,-1), (-1,1) -> normalised (1,-1)/sqrt2, (-1,1)/sqrt2
    s = np.array([[3.0, 1.0], [1.0, 3.0]])
    m = ProtoNet(normalize="center_l2", center="support", pre_l2=False, scale=2.0).fit(s, [0, 1], 2)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(m.centre, [2.0, 2.0])
    np.testing.assert_allclose(m.prototypes, [[r, -r], [-r, r]], atol=1e-12)
    # query (4,2): centred (2,0) -> (1,0); d0 = (1-r)^2 + r^2 = 2 - sqrt2, d1 = 2 + sqrt2
    q = np.array([[4.0, 2.0]])
    d0, d1 = 2 - math.sqrt(2), 2 + math.sqrt(2)
    np.testing.assert_allclose(m.scores(q), [[-d0, -d1]], atol=1e-12)
    np.testing.assert_allclose(m.logits(q), [[-2 * d0, -2 * d1]], atol=1e-12)
    np.testing.assert_allclose(m.predict_proba(q), [_softmax2(-2 * d0, -2 * d1)], atol=1e-12)


def test_hand_example_center_l2_with_pre_l2():
    # support (3,0) -> class 0, (0,4) -> class 1; L2 first: (1,0), (0,1); centre (.5,.5)
    # centred (.5,-.5), (-.5,.5) -> prototypes (r,-r), (-r,r) with r = 1/sqrt2
    s = np.array([[3.0, 0.0], [0.0, 4.0]])
    m = ProtoNet(center="support", pre_l2=True, scale=1.0).fit(s, [0, 1], 2)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(m.centre, [0.5, 0.5])
    np.testing.assert_allclose(m.prototypes, [[r, -r], [-r, r]], atol=1e-12)
    # query (0,-2): L2 (0,-1), minus centre (-.5,-1.5), normalised z = (-1,-3)/sqrt10
    # d0 = 2 - 2 z.(r,-r) = 2 - 2/sqrt5 ; d1 = 2 + 2/sqrt5
    q = np.array([[0.0, -2.0]])
    d0, d1 = 2 - 2 / math.sqrt(5), 2 + 2 / math.sqrt(5)
    np.testing.assert_allclose(m.scores(q), [[-d0, -d1]], atol=1e-12)
    np.testing.assert_allclose(m.predict_proba(q), [_softmax2(-d0, -d1)], atol=1e-12)
    # without pre-L2 the centre is the raw mean (1.5, 2) and the answer differs
    raw = ProtoNet(center="support", pre_l2=False, scale=1.0).fit(s, [0, 1], 2)
    np.testing.assert_allclose(raw.centre, [1.5, 2.0])


def test_hand_example_l2_prototype_renormalisation():
    # class 0: (2,0), (0,2) -> l2 (1,0), (0,1) -> mean (.5,.5); class 1: (-3,0) -> (-1,0)
    s = np.array([[2.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    y = [0, 0, 1]
    q = np.array([[0.0, -5.0]])  # -> (0,-1)
    plain = ProtoNet(normalize="l2", renorm=False, scale=1.0).fit(s, y, 2)
    np.testing.assert_allclose(plain.prototypes, [[0.5, 0.5], [-1.0, 0.0]])
    # d0 = .25 + 2.25 = 2.5, d1 = 1 + 1 = 2
    np.testing.assert_allclose(plain.scores(q), [[-2.5, -2.0]], atol=1e-12)
    ren = ProtoNet(normalize="l2", renorm=True, scale=1.0).fit(s, y, 2)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(ren.prototypes, [[r, r], [-1.0, 0.0]], atol=1e-12)
    # d0 = 2 - 2 cos = 2 - 2 * (-r) = 2 + sqrt2
    np.testing.assert_allclose(ren.scores(q), [[-(2 + math.sqrt(2)), -2.0]], atol=1e-12)


def test_cosine_equals_euclidean_with_double_scale_when_renormalised():
    rng = np.random.default_rng(0)
    s, q = rng.normal(size=(10, 8)), rng.normal(size=(7, 8))
    y = np.arange(10) % 5
    e = ProtoNet(metric="euclidean", renorm=True, scale=4.0).fit(s, y, 5)
    c = ProtoNet(metric="cosine", renorm=True, scale=8.0).fit(s, y, 5)
    np.testing.assert_allclose(e.predict_proba(q), c.predict_proba(q), atol=1e-10)


@pytest.mark.parametrize("normalize", ["center_l2", "l2", "none"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_outputs_are_probabilities(normalize, metric):
    rng = np.random.default_rng(1)
    s, q = rng.normal(size=(15, 16)) * 5, rng.normal(size=(40, 16)) * 5
    m = ProtoNet(normalize=normalize, metric=metric).fit(s, np.arange(15) % 3, 3)
    p = m.predict_proba(q)
    assert p.shape == (40, 3)
    assert np.all(p >= 0) and np.all(p <= 1)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert m.predict_proba(np.zeros((0, 16))).shape == (0, 3)


def test_scale_sharpens_without_changing_labels():
    rng = np.random.default_rng(2)
    s, q = rng.normal(size=(8, 6)), rng.normal(size=(20, 6))
    y = np.arange(8) % 4
    lo = ProtoNet(scale=1.0).fit(s, y, 4).predict(q)
    hi = ProtoNet(scale=30.0).fit(s, y, 4).predict(q)
    assert lo.label.tolist() == hi.label.tolist()
    assert np.all(hi.confidence >= lo.confidence - 1e-12)
    assert hi.confidence.mean() > lo.confidence.mean()


@pytest.mark.parametrize("center", ["support", "query"])
def test_streaming_batches_equal_whole_set(center):
    rng = np.random.default_rng(3)
    s, q = rng.normal(size=(10, 12)) + 3, rng.normal(size=(53, 12)) + 3
    y = np.arange(10) % 5
    whole = ProtoNet(center=center).fit(s, y, 5)
    streamed = ProtoNet(center=center)
    if center == "query":
        whole.set_query_statistics(q)
        streamed.set_query_statistics(q)  # before fit: must give the same centre
    streamed.fit(s, y, 5)
    p_whole = whole.predict_proba(q)
    p_stream = np.concatenate([streamed.predict_proba(q[i:i + 7]) for i in range(0, len(q), 7)])
    np.testing.assert_allclose(p_stream, p_whole, atol=1e-12)
    # a single query alone gets the same answer as inside the whole folder
    np.testing.assert_allclose(streamed.predict_proba(q[5:6]), p_whole[5:6], atol=1e-12)


def test_transductive_centre_is_mean_of_support_and_query():
    rng = np.random.default_rng(4)
    s, q = rng.normal(size=(5, 4)), rng.normal(size=(30, 4)) + 2
    m = ProtoNet(center="query").fit(s, np.arange(5), 5)
    u = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731  (pre-L2 space)
    np.testing.assert_allclose(m.centre, u(s).mean(0))  # no query statistics yet -> support mean
    p_before = m.predict_proba(q)
    m.set_query_statistics(q)
    np.testing.assert_allclose(m.centre, u(np.concatenate([s, q])).mean(0))
    assert not np.allclose(m.predict_proba(q), p_before)
    m.set_query_statistics(None)  # forget them: back to the support mean
    np.testing.assert_allclose(m.centre, u(s).mean(0))
    np.testing.assert_allclose(m.predict_proba(q), p_before)
    raw = ProtoNet(center="query", pre_l2=False).fit(s, np.arange(5), 5).set_query_statistics(q)
    np.testing.assert_allclose(raw.centre, np.concatenate([s, q]).mean(0))


def test_base_centre():
    s = np.array([[3.0, 1.0], [1.0, 3.0]])
    m = ProtoNet(center="base", base_mean=[0.0, 0.0]).fit(s, [0, 1], 2)
    np.testing.assert_allclose(m.centre, [0.0, 0.0])
    with pytest.raises(DataError):
        ProtoNet(center="base")
    with pytest.raises(DataError, match="dims"):
        ProtoNet(center="base", base_mean=[0.0, 0.0, 0.0]).fit(s, [0, 1], 2)


def test_errors():
    s = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(DataError, match="no support example"):
        ProtoNet().fit(s, [0, 0], 2)  # class 1 empty
    with pytest.raises(DataError, match="non-finite"):
        ProtoNet().fit(np.array([[1.0, np.nan], [0.0, 1.0]]), [0, 1], 2)
    with pytest.raises(DataError, match="not fitted"):
        ProtoNet().predict_proba(s)
    m = ProtoNet().fit(s, [0, 1], 2)
    with pytest.raises(DataError, match="dims"):
        m.predict_proba(np.ones((1, 3)))
    with pytest.raises(DataError):
        ProtoNet().fit(s, [0, 2], 2)  # label out of range
    for bad in ({"normalize": "zscore"}, {"center": "x"}, {"metric": "l1"}, {"scale": 0}, {"temperature": 12}):
        with pytest.raises(DataError):
            ProtoNet(**bad)


def test_registry_names_every_method_and_imports_lazily():
    import subprocess
    import sys

    from fewshot_gui.core.fewshot.base import METHODS, method_class

    assert available_methods() == sorted(METHODS)
    for name in METHODS:
        assert method_class(name).name == name
    code = ("import sys\nfrom fewshot_gui.core.fewshot import available_methods, get_method\n"
            "assert 'maml' in available_methods()\nget_method('protonet')\nget_method('protonet-transductive')\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # ProtoNet alone never imports torch


def test_unknown_method_name_is_a_config_error():
    from fewshot_gui.core.errors import ConfigError

    with pytest.raises(ConfigError, match="protonet"):
        get_method("protonett")
