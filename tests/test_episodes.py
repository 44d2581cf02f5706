"""Episode sampler and data-set readers (ImageFolder and zip)."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_gui.core.io.datasets import ImageFolderDataset, ZipDataset, open_dataset, split_classes
from fewshot_gui.core.episodes.sampler import EpisodeSampler, LabelIndex, rotate_image
from fewshot_gui.core.errors import DataError, ImageLoadError


def _check_episode(ep, sizes, way, shot, query):
    assert ep.support.shape == (way, shot) and ep.query.shape == (way, query)
    keys = list(zip(ep.classes.tolist(), ep.rotations.tolist()))
    assert len(set(keys)) == way  # distinct (class, rotation) pairs
    for j, c in enumerate(ep.classes):
        s, q = set(ep.support[j].tolist()), set(ep.query[j].tolist())
        assert len(s) == shot and len(q) == query  # no repeats inside support or query
        assert not (s & q)  # support and query never share an item
        assert all(0 <= i < sizes[c] for i in s | q)


def test_support_and_query_never_share_an_item_over_many_seeds():
    rng = np.random.default_rng(0)
    for seed in range(60):
        n_cls = int(rng.integers(5, 15))
        sizes = rng.integers(4, 12, size=n_cls)
        way = int(rng.integers(2, min(n_cls, 6) + 1))
        shot = int(rng.integers(1, 3))
        query = int(rng.integers(1, 3))
        s = EpisodeSampler(sizes, way, shot, query, seed=seed)
        for ep in s.episodes(20):
            _check_episode(ep, sizes, way, shot, query)
            # the flattened item lists agree with the labels
            assert len(ep.support_items()) == len(ep.support_labels) == way * shot
            assert len(ep.query_items()) == len(ep.query_labels) == way * query


def test_exact_fit_uses_every_item_once():
    # each class has exactly shot + query items: every item is used, none twice
    s = EpisodeSampler([3, 3, 3], way=3, shot=1, query=2, seed=1)
    for ep in s.episodes(10):
        for j in range(3):
            assert sorted(ep.support[j].tolist() + ep.query[j].tolist()) == [0, 1, 2]


def test_deterministic_for_a_seed_and_index_addressable():
    sizes = [10] * 12
    a = list(EpisodeSampler(sizes, 5, 1, 3, seed=7).episodes(15))
    b = list(EpisodeSampler(sizes, 5, 1, 3, seed=7).episodes(15))
    c = list(EpisodeSampler(sizes, 5, 1, 3, seed=8).episodes(15))
    for x, y in zip(a, b):
        assert np.array_equal(x.classes, y.classes) and np.array_equal(x.support, y.support)
        assert np.array_equal(x.query, y.query)
    assert any(not np.array_equal(x.classes, z.classes) or not np.array_equal(x.support, z.support)
               for x, z in zip(a, c))
    # resuming at episode 10 gives the same episodes as drawing from the start
    resumed = list(EpisodeSampler(sizes, 5, 1, 3, seed=7).episodes(5, start=10))
    for x, y in zip(a[10:], resumed):
        assert np.array_equal(x.classes, y.classes) and np.array_equal(x.query, y.query)


def test_classes_are_sampled_broadly():
    s = EpisodeSampler([5] * 10, 3, 1, 1, seed=0)
    seen = np.zeros(10, int)
    for ep in s.episodes(300):
        seen[ep.classes] += 1
    assert seen.min() > 50  # every class appears, roughly uniformly (expected 90)


def test_within_group_episodes_stay_in_one_group():
    groups = ["A"] * 6 + ["B"] * 5 + ["C"] * 2  # C is too small for 4-way
    sizes = [6] * 13
    s = EpisodeSampler(sizes, way=4, shot=1, query=2, seed=3, groups=groups, within_group=True)
    assert s.skipped_groups == ["C"]
    used = set()
    for ep in s.episodes(100):
        gs = {groups[c] for c in ep.classes}
        assert len(gs) == 1
        assert s.group_names[ep.group] in gs
        used |= gs
    assert used == {"A", "B"}
    # without within-group, episodes mix groups
    mixed = EpisodeSampler(sizes, way=4, shot=1, query=2, seed=3, groups=groups)
    assert any(len({groups[c] for c in ep.classes}) > 1 for ep in mixed.episodes(50))


def test_rotation_augmentation():
    sizes = [4] * 6
    s = EpisodeSampler(sizes, way=5, shot=1, query=1, seed=0, rotations=True)
    rots = set()
    for ep in s.episodes(100):
        _check_episode(ep, sizes, 5, 1, 1)
        assert len(set(ep.classes.tolist())) == 5  # one rotation per base class by default
        rots |= set(ep.rotations.tolist())
    assert rots == {0, 1, 2, 3}
    # rotations as separate classes let a 3-class set host 10-way episodes
    many = EpisodeSampler([4] * 3, way=10, shot=1, query=1, seed=0, rotations=True, one_rotation_per_class=False)
    for ep in many.episodes(30):
        _check_episode(ep, [4] * 3, 10, 1, 1)
    with pytest.raises(DataError):
        EpisodeSampler([4] * 3, way=10, shot=1, query=1, rotations=True)  # needs 10 base classes
    # without rotations every rotation is 0
    assert all(ep.rotations.sum() == 0 for ep in EpisodeSampler(sizes, 5, 1, 1).episodes(10))


def test_rotate_image_is_exact():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img = Image.fromarray(a, "L")
    for k in range(4):
        np.testing.assert_array_equal(np.asarray(rotate_image(img, k)), np.rot90(a, k))


def test_insufficient_data_raises_clear_errors():
    with pytest.raises(DataError, match="fewer than shot \\+ query = 6"):
        EpisodeSampler([10, 3, 10], 2, 1, 5, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="b \\(3\\)"):
        EpisodeSampler([10, 3, 10], 2, 1, 5, class_names=["a", "b", "c"])
    s = EpisodeSampler([10, 3, 10], 2, 1, 5, skip_small_classes=True)
    assert s.skipped_classes == [1]
    assert all(1 not in ep.classes for ep in s.episodes(20))
    with pytest.raises(DataError, match="5-way"):
        EpisodeSampler([10] * 4, 5, 1, 1)
    with pytest.raises(DataError, match="no group has 3 classes"):
        EpisodeSampler([10] * 4, 3, 1, 1, groups=["a", "a", "b", "b"], within_group=True)
    with pytest.raises(DataError):
        EpisodeSampler([10] * 4, 3, 1, 1, within_group=True)  # no groups given
    with pytest.raises(DataError):
        EpisodeSampler([10] * 4, 0, 1, 1)


def test_label_index_maps_episodes_to_rows():
    labels = np.array(["b", "a", "b", "c", "a", "c", "b", "a", "c"])
    idx = LabelIndex(labels)
    assert list(idx.names) == ["a", "b", "c"] and idx.class_sizes.tolist() == [3, 3, 3]
    s = idx.sampler(3, 1, 2, seed=0)
    for ep in s.episodes(20):
        srows, qrows = idx.episode_rows(ep)
        assert not set(srows) & set(qrows)
        np.testing.assert_array_equal(labels[srows], idx.names[ep.classes][ep.support_labels])
        np.testing.assert_array_equal(labels[qrows], idx.names[ep.classes][ep.query_labels])


# ---------------------------------------------------------------------------------- data sets
def _png_bytes(value: int, size=(8, 8), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tiny_zips(tmp_path):
    z1, z2 = tmp_path / "set1.zip", tmp_path / "set2.zip"
    with zipfile.ZipFile(z1, "w") as zf:
        zf.writestr("set1/", "")
        for a, n_chars in (("Alpha", 3), ("Beta", 2)):
            for c in range(1, n_chars + 1):
                for d in (10, 2, 1):  # natural order: 1, 2, 10
                    zf.writestr(f"set1/{a}/character{c:02d}/0{c}_{d}.png", _png_bytes(10 * c + d))
        zf.writestr("set1/Alpha/character01/notes.txt", "not an image")
        zf.writestr("__MACOSX/set1/Alpha/character01/._01_1.png", "junk")
    with zipfile.ZipFile(z2, "w") as zf:
        for c in (1, 2):
            for d in (1, 2, 3):
                zf.writestr(f"set2/Gamma/character{c:02d}/x_{d}.png", _png_bytes(100 + c))
        zf.writestr("set2/Beta/character01/0_1.png", _png_bytes(0))  # Beta/character01 again
        zf.writestr("set2/Gamma/character02/broken.png", b"\x89PNG broken")
    return z1, z2


def test_zip_dataset(tiny_zips):
    z1, z2 = tiny_zips
    ds = ZipDataset([z1, z2])
    assert ds.classes == ["Alpha/character01", "Alpha/character02", "Alpha/character03",
                          "Beta/character01", "Beta/character02", "Gamma/character01", "Gamma/character02"]
    assert ds.groups == ["Alpha"] * 3 + ["Beta"] * 2 + ["Gamma"] * 2
    assert ds.items_per_class == [3, 3, 3, 3, 3, 3, 4]  # Beta/character01 read once, from set1
    assert ds.duplicates == ["set2.zip:Beta/character01"]
    img = ds.load(0, 2)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (8, 8)
    assert img.getpixel((0, 0)) == (20, 20, 20)  # Alpha/character01, drawer 10 is last
    assert ds.load(0, 0).getpixel((0, 0)) == (11, 11, 11)
    assert ZipDataset(z1, mode="L").load(4, 0).mode == "L"
    broken = next(i for i in range(4) if ds.item_name(6, i).endswith("broken.png"))
    with pytest.raises(ImageLoadError, match="broken.png"):
        ds.load(6, broken)
    # group filters (train/test splits by alphabet)
    assert ZipDataset([z1, z2], include_groups=["Gamma"]).classes == ["Gamma/character01", "Gamma/character02"]
    assert set(ZipDataset([z1, z2], exclude_groups=["Alpha", "Gamma"]).groups) == {"Beta"}
    with pytest.raises(DataError, match="Delta"):
        ZipDataset(z1, include_groups=["Delta"])
    # subset and pickling (data-loader workers)
    import pickle

    sub = pickle.loads(pickle.dumps(ds.subset(["Beta/character02", "Alpha/character01"])))
    assert sub.classes == ["Beta/character02", "Alpha/character01"] and sub.groups == ["Beta", "Alpha"]
    assert sub.load(1, 0).getpixel((0, 0)) == (11, 11, 11)


def test_zip_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no such zip"):
        ZipDataset(tmp_path / "missing.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        ZipDataset(bad)


def test_zip_dataset_with_sampler_and_rotated_images(tiny_zips):
    ds = ZipDataset(tiny_zips[0], mode="L")
    s = EpisodeSampler.for_dataset(ds, way=2, shot=1, query=2, seed=0, within_group=True, rotations=True)
    ep = s.episode(0)
    assert ep.support_labels.tolist() == [0, 1] and ep.query_labels.tolist() == [0, 0, 1, 1]
    assert len({ds.groups[c] for c in ep.classes}) == 1
    # the image of support row j: class ep.classes[j], item ep.support[j, 0], rotated by its class's rotation
    for j, (c, i, r) in enumerate(ep.support_items()):
        assert (c, i, r) == (int(ep.classes[j]), int(ep.support[j, 0]), int(ep.rotations[j]))
        img = np.asarray(rotate_image(ds.load(c, i), r))
        np.testing.assert_array_equal(img, np.rot90(np.asarray(ds.load(c, i)), r))


def test_image_folder_dataset(tmp_path):
    root = tmp_path / "data"
    for cls, n in (("cat", 3), ("dog", 2), ("bird10", 2), ("bird2", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (6, 5), (i * 40, 0, 0)).save(root / cls / f"img{i}.png")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["bird2", "bird10", "cat", "dog"]
    assert ds.items_per_class == [2, 2, 3, 2] and len(ds) == 9
    assert ds.groups == [""] * 4
    img = ds.load(2, 1)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (40, 0, 0)
    paths, labels = ds.paths()
    assert len(paths) == 9 and labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert ds.subset(["dog"]).items_per_class == [2]
    assert isinstance(open_dataset(root), ImageFolderDataset)
    with pytest.raises(DataError):
        ImageFolderDataset(tmp_path / "missing")


def test_image_folder_dataset_two_levels(tmp_path):
    root = tmp_path / "alphabets"
    for a in ("Greek", "Latin"):
        for c in ("c1", "c2"):
            (root / a / c).mkdir(parents=True)
            Image.new("L", (4, 4), 9).save(root / a / c / "x.png")
    ds = ImageFolderDataset(root, depth=2, mode="L")
    assert ds.classes == ["Greek/c1", "Greek/c2", "Latin/c1", "Latin/c2"]
    assert ds.groups == ["Greek", "Greek", "Latin", "Latin"]
    assert ds.load(0, 0).mode == "L"
    assert ImageFolderDataset(root, depth=2, exclude_groups=["Greek"]).classes == ["Latin/c1", "Latin/c2"]


def test_split_classes():
    names = [f"c{i}" for i in range(20)]
    sp = split_classes(names, test=0.25, val=3, seed=1)
    assert len(sp.test) == 5 and len(sp.val) == 3 and len(sp.train) == 12
    assert not (set(sp.test) & set(sp.train)) and not (set(sp.val) & set(sp.train) | set(sp.val) & set(sp.test))
    assert set(sp.train) | set(sp.val) | set(sp.test) == set(names)
    assert split_classes(list(reversed(names)), test=0.25, val=3, seed=1) == sp  # order-independent
    assert split_classes(names, test=0.25, val=3, seed=2).test != sp.test
    with pytest.raises(DataError):
        split_classes(names, test=15, val=10)


def test_real_omniglot_zips_if_present():
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
    zips = sorted(data.glob("images_background_small*.zip"))
    if len(zips) < 2:
        pytest.skip("Omniglot zips not present")
    ds = ZipDataset(zips, mode="L")
    assert set(ds.items_per_class) == {20}
    assert len(set(ds.groups)) >= 5
    img = ds.load(0, 0)
    assert img.size == (105, 105) and img.mode == "L"
    s = EpisodeSampler.for_dataset(ds, way=20, shot=1, query=5, seed=0, within_group=True)
    ep = s.episode(0)
    assert len({ds.groups[c] for c in ep.classes}) == 1


def test_open_data_spec_layouts_and_selection(tmp_path):
    from fewshot_gui.core.io.datasets import open_data_spec, parse_data_spec

    assert parse_data_spec("a/b.zip::X, Y") == (Path("a/b.zip"), ["X", "Y"])
    assert parse_data_spec("a/b") == (Path("a/b"), None)
    flat = tmp_path / "flat"
    for c in ("cat", "dog", "emu"):
        (flat / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(flat / c / "0.png")
    ds = open_data_spec(flat)
    assert isinstance(ds, ImageFolderDataset) and ds.classes == ["cat", "dog", "emu"]
    assert open_data_spec(f"{flat}::emu,cat").classes == ["cat", "emu"]  # one level: names are classes
    with pytest.raises(DataError, match="no class named 'cow'"):
        open_data_spec(f"{flat}::cow")
    nested = tmp_path / "nested"
    for g in ("Greek", "Latin"):
        for c in ("c1", "c2"):
            (nested / g / c).mkdir(parents=True)
            Image.new("L", (4, 4)).save(nested / g / c / "0.png")
    ds = open_data_spec(nested, mode="L")
    assert ds.classes == ["Greek/c1", "Greek/c2", "Latin/c1", "Latin/c2"] and ds.mode == "L"
    assert open_data_spec(f"{nested}::Latin").groups == ["Latin", "Latin"]  # two levels: names are groups
    with pytest.raises(DataError, match="data set not found"):
        open_data_spec(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a zip file or folder"):
        open_data_spec(tmp_path / "notes.txt")


def test_open_data_spec_zip_groups(tiny_zips):
    from fewshot_gui.core.io.datasets import open_data_spec

    ds = open_data_spec(f"{tiny_zips[0]}::Beta")
    assert isinstance(ds, ZipDataset) and ds.classes == ["Beta/character01", "Beta/character02"]


def test_tracks_are_never_in_both_support_and_query():
    # 3 classes, 12 items each in 4 tracks of 3 frames: support from different tracks, queries from the others
    labels = np.repeat(["a", "b", "c"], 12)
    tracks = [f"{lab}/{k // 3}" for lab in "abc" for k in range(12)]
    index = LabelIndex(labels, item_groups=tracks)
    sampler = index.sampler(3, 2, 3, seed=0)
    for ep in sampler.episodes(50):
        s, q = index.episode_rows(ep)
        for c in range(3):
            st = {tracks[r] for r in s[ep.support_labels == c]}
            qt = {tracks[r] for r in q[ep.query_labels == c]}
            assert len(st) == 2 and not st & qt
    # same seed, same episodes; a plain index draws other items
    again = LabelIndex(labels, item_groups=tracks).sampler(3, 2, 3, seed=0)
    assert all(np.array_equal(a.query, b.query) for a, b in zip(sampler.episodes(5), again.episodes(5)))


def test_tracks_too_big_to_leave_queries_make_a_class_small():
    labels = np.repeat(["a", "b"], 6)
    tracks = ["a/0"] * 5 + ["a/1"] + [f"b/{k}" for k in range(6)]
    with pytest.raises(DataError, match="kept apart by track"):
        LabelIndex(labels, item_groups=tracks).sampler(2, 1, 2)
