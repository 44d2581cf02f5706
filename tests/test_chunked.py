"""Chunked float32 feature kernels agree with the float64 whole-matrix maths of features.py."""

import numpy as np
import pytest

from fewshot_gui.core.fewshot import chunked
from fewshot_gui.core.fewshot.features import apply_centre, centre_normalise, mean_centre, sq_distance_scores


def _data(n=50, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) + 2.0).astype(np.float32)
    if n > 17:
        x[[3, 17]] = np.nan
    return x


@pytest.mark.parametrize("pre_l2", [True, False])
def test_centre_scores_and_sums_match_the_float64_maths(pre_l2):
    x, s = _data(), _data(5, seed=1)
    ok = chunked.finite_rows(x, chunk=7)
    assert ok.sum() == 48 and not ok[3] and not ok[17]
    c = chunked.centre_of(x, pre_l2=pre_l2, extra=s, chunk=7)
    zs, zq, c64 = centre_normalise(s.astype(np.float64), x[ok].astype(np.float64), "all", pre_l2=pre_l2)
    np.testing.assert_allclose(c, c64, rtol=1e-5, atol=1e-6)
    protos = zs[:3]
    got = chunked.sq_distance_scores(x, protos, c, pre_l2=pre_l2, chunk=7)
    assert np.isnan(got[[3, 17]]).all()
    np.testing.assert_allclose(got[ok], sq_distance_scores(zq, protos), atol=1e-5)
    np.testing.assert_allclose(got[ok], sq_distance_scores(apply_centre(x[ok], c64, pre_l2), protos), atol=1e-5)
    w = np.random.default_rng(2).random((len(x), 3))
    w[3] = 1e9  # a failed row's weight is ignored
    np.testing.assert_allclose(chunked.weighted_sums(x, w, c, pre_l2=pre_l2, chunk=7), w[ok].T @ zq, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunked.centre_of(x, pre_l2=False, rows=np.arange(50) < 10),
                               mean_centre(x[[i for i in range(10) if i != 3]].astype(np.float64)), rtol=1e-5)


def test_map_rows_and_row_chunks():
    x = _data(20, 4)
    out = chunked.map_rows(x, lambda z: z[:, :2] * 2, centre=None, pre_l2=False, chunk=6)
    ok = chunked.finite_rows(x)
    assert out.shape == (20, 2) and out.dtype == np.float32 and np.isnan(out[~ok]).all()
    np.testing.assert_allclose(out[ok], x[ok][:, :2] * 2)
    assert [(s.start, s.stop) for s in chunked.row_chunks(13, 5)] == [(0, 5), (5, 10), (10, 13)]
    assert chunked.map_rows(np.full((3, 4), np.nan, np.float32), lambda z: z, width=4).shape == (3, 4)
