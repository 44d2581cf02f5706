"""Meta-tuning the top of EfficientNet-Lite0 (``fewshot train --tune-blocks``): the model file holds
only the tuned blocks and the base weights' digest, round-trips, and is refused on other base weights."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_gui.core.embed.backbones import get_backbone, list_backbones
from fewshot_gui.core.errors import DataError, ModelFileError
from fewshot_gui.core.jobs import run_job
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file, save_model
from fewshot_gui.core.training import metatune
from fewshot_gui.core.training.config import TrainConfig
from fewshot_gui.core.training.lower import LowerBackbone

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not any(i.name == "efficientnet-lite0" and i.weights_available
                                         for i in list_backbones()), reason="no EfficientNet-Lite0 weights")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ProtoNet-tuned model file (top block of Lite0) from a few episodes on a tiny folder of
    four colours; the lower part runs on torch (no ONNX export in tests), and a small logit scale
    keeps the loss of these easy classes from vanishing, so that the weights move."""
    from PIL import Image

    root = tmp_path_factory.mktemp("metatune")
    data = root / "data"
    rng = np.random.default_rng(0)
    for k, colour in enumerate([(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40)]):
        (data / f"class{k}").mkdir(parents=True)
        for i in range(4):
            arr = np.clip(np.array(colour) + rng.integers(-40, 41, size=(24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(data / f"class{k}" / f"{i}.png")
    out = root / "tuned.safetensors"
    cfg = TrainConfig(method="protonet", backbone="efficientnet-lite0", tune_blocks=1, data=[str(data)],
                      holdout=0.5, way=2, shot=1, query=2, episodes=3, val_every=10, val_episodes=2, lr=1e-2,
                      out=str(out), cache_dir=str(root / "cache"), threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metatune, "PROTO_SCALE", 0.05)
        mp.setattr(metatune, "lower_backbone",
                   lambda name, n, cache_dir=None: LowerBackbone(name, n, cache_dir, engine="torch"))
        threads = torch.get_num_threads()
        try:
            result = run_job(metatune.training_job(cfg))
        finally:
            torch.set_num_threads(threads)
    return out, result, data


def test_model_file_keeps_only_the_tuned_block_and_round_trips(trained, tmp_path):
    out, result, data = trained
    meta, tensors = read_model_file(out)
    assert meta["net"] == {"type": "tuned-backbone", "tune_blocks": 1, "head": None}
    assert {k.split(".")[3] for k in tensors if k.startswith("tuned.net._blocks.")} == {"15"}
    assert all(k.startswith(("tuned.net._blocks.15.", "tuned.net._conv_head.", "tuned.net._bn1."))
               for k in tensors)
    base = get_backbone("efficientnet-lite0", engine="torch", device="cpu")
    assert meta["base"] == {"backbone": "efficientnet-lite0", "weights_sha256": base.weights_digest()}
    assert meta["validation"]["before_tuning"]["episodes"] == 2
    changed = [k for k, v in tensors.items() if v.dtype.kind == "f"
               and not np.array_equal(v, base.module.state_dict()[k[len("tuned."):]].numpy())]
    assert changed  # training moved the top block

    bundle = load_model(out)
    tuned = bundle.make_backbone(device="cpu", engine="torch", cache_dir=tmp_path / "cache")
    state = tuned.module.state_dict()
    for k, v in tensors.items():
        assert np.array_equal(state[k[len("tuned."):]].numpy(), v)
    lower_block = "net._blocks.3._project_conv.weight"
    assert torch.equal(state[lower_block], base.module.state_dict()[lower_block])
    assert tuned.key != base.key and bundle.digest in tuned.key
    assert type(bundle.make_method()).__name__ == "ProtoNet"
    assert tuned.name == Path(out).stem and tuned.family == "efficientnet-lite0"

    # the same image embedded by the loaded model and by the tuned top on the lower activations
    lower = LowerBackbone("efficientnet-lite0", 1, engine="torch")
    top = lower.top()
    top.top.load_state_dict({k: torch.from_numpy(np.array(tensors["tuned." + top.full_name(k)]))
                             for k in top.top.state_dict()})
    from PIL import Image

    img = Image.open(next(Path(data).glob("class0/*.png")))
    x = tuned.preprocess(img)[None]
    with torch.no_grad():
        want = top(torch.from_numpy(lower.split.lower.embed(x))).numpy()
    assert np.allclose(tuned.embed(x), want, atol=1e-4)
    assert np.abs(tuned.embed(x) - base.embed(x)).max() > 1e-5  # the tuned block, not the base one

    # saved again from what was read: the same bytes
    again = tmp_path / "again.safetensors"
    save_model(again, tensors, meta)
    assert again.read_bytes() == out.read_bytes()


def test_refused_when_the_base_weights_differ(trained, tmp_path):
    out, _, _ = trained
    base = get_backbone("efficientnet-lite0", engine="torch", device="cpu")
    sd = {k[len("net."):]: v.clone() for k, v in base.module.state_dict().items()}
    sd["_blocks.2._project_conv.weight"] += 0.01  # a lower block: other base weights
    other = tmp_path / "other-lite0.pth"
    torch.save(sd, other)
    bundle = load_model(out)
    with pytest.raises(ModelFileError, match="meta-tuned from other efficientnet-lite0 weights") as err:
        bundle.make_backbone(device="cpu", engine="torch", weights=other)
    assert str(out) in str(err.value) and "other-lite0.pth" in str(err.value)

    meta, tensors = read_model_file(out)
    meta["base"]["weights_sha256"] = "0" * 64
    forged = tmp_path / "forged.safetensors"
    save_model(forged, tensors, meta)
    with pytest.raises(ModelFileError, match=str(forged)):
        load_model(forged).make_backbone(device="cpu", engine="torch")


def test_model_file_checks(trained, tmp_path):
    out, _, _ = trained
    meta, tensors = read_model_file(out)
    cases = {"base": ("base", None, "meta.base is missing"),
             "digest": ("base", {"backbone": "efficientnet-lite0", "weights_sha256": "xyz"}, "SHA-256"),
             "blocks": ("net", {"type": "tuned-backbone", "tune_blocks": 99, "head": None}, "tune_blocks")}
    for name, (key, value, message) in cases.items():
        bad = dict(meta)
        bad[key] = value
        path = tmp_path / f"{name}.safetensors"
        save_model(path, tensors, bad)
        with pytest.raises(ModelFileError, match=message):
            load_model(path)
    stray = dict(tensors)
    stray["tuned.net._blocks.15.nonsense"] = np.zeros(3, np.float32)
    path = tmp_path / "stray.safetensors"
    save_model(path, stray, meta)
    with pytest.raises(ModelFileError, match="nonsense"):
        load_model(path).make_backbone(device="cpu", engine="torch")


def test_cli_options():
    from fewshot_gui.cli import build_parser
    from fewshot_gui.cli.train import config_from_args

    parse = build_parser().parse_args
    base = ["train", "--backbone", "efficientnet-lite0", "--data", ".", "--out", "x.safetensors"]
    assert config_from_args(parse(base)).tune_blocks >= 1
    assert config_from_args(parse(base + ["--tune-blocks", "3"])).tune_blocks == 3
    assert config_from_args(parse(base)).tune_bn and not config_from_args(parse(base + ["--no-tune-bn"])).tune_bn
    assert config_from_args(parse(base + ["--method", "maml"])).tune_blocks == 0
    with pytest.raises(DataError, match="--tune-blocks"):
        config_from_args(parse(base + ["--tune-blocks", "9"]))
    cfg = config_from_args(parse(base + ["--method", "relation", "--tune-blocks", "1"]))
    with pytest.raises(DataError, match="protonet or maml"):
        run_job(metatune.training_job(cfg))
    conv = config_from_args(parse(["train", "--data", ".", "--out", "x.safetensors", "--tune-blocks", "1"]))
    with pytest.raises(DataError, match="pretrained backbone"):
        run_job(metatune.training_job(conv))


def test_maml_tuned_model_carries_its_head(trained, tmp_path):
    _, _, data = trained
    out = tmp_path / "maml.safetensors"
    cfg = TrainConfig(method="maml", backbone="efficientnet-lite0", tune_blocks=1, data=[str(data)], way=2, shot=1,
                      query=2, episodes=2, steps=2, val_episodes=2, out=str(out), cache_dir=str(tmp_path / "cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metatune, "lower_backbone",
                   lambda name, n, cache_dir=None: LowerBackbone(name, n, cache_dir, engine="torch"))
        run_job(metatune.training_job(cfg))
    meta, tensors = read_model_file(out)
    assert meta["method"] == "maml" and meta["net"]["head"]["maml"]["mode"] == "head"
    assert any(k.startswith("net.") for k in tensors) and any(k.startswith("tuned.") for k in tensors)
    bundle = load_model(out)
    method = bundle.make_method()
    assert type(method).__name__ == "MAML"
    backbone = bundle.make_backbone(device="cpu", engine="torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    assert backbone.embed(x).shape == (2, 1280)


def test_learned_models_are_listed_and_offered_to_auto(trained, tmp_path, monkeypatch, capsys):
    import shutil

    from fewshot_gui.cli import main
    from fewshot_gui.core.models.auto import default_candidates, learned_models_dir

    out, _, _ = trained
    folder = tmp_path / "learned"
    folder.mkdir()
    shutil.copy(out, folder / "my-signs.safetensors")
    monkeypatch.setenv("FEWSHOT_MODELS_DIR", str(folder))
    assert learned_models_dir() == folder
    found = [c for c in default_candidates() if c.model_file is not None and c.model_file.parent == folder]
    assert [(c.name, c.method, c.family) for c in found] == [("my-signs", "protonet", "efficientnet-lite0")]
    assert not [c for c in default_candidates("maml") if c.model_file and c.model_file.parent == folder]
    assert main(["backbones"]) == 0
    assert "my-signs.safetensors  protonet on efficientnet-lite0" in capsys.readouterr().out


def test_a_tuned_lite0_gets_lite0s_trust_constants(trained):
    from types import SimpleNamespace

    from fewshot_gui.core.models.family import backbone_family, trust_profile_for
    from fewshot_gui.core.trust.profile import GENERIC_SHOT_COSINE_THRESHOLDS, SHOT_COSINE_THRESHOLDS, TrustProfile

    out, _, _ = trained
    tuned = load_model(out).make_backbone(device="cpu", engine="torch")
    lite0 = SHOT_COSINE_THRESHOLDS["efficientnet-lite0"]
    assert backbone_family(tuned) == "efficientnet-lite0"
    assert trust_profile_for(tuned).shot_cosines == lite0
    assert TrustProfile.for_backbone(tuned.name).shot_cosines == GENERIC_SHOT_COSINE_THRESHOLDS  # by its name: not
    # a backbone without a family is its own; nothing named gives the unnamed profile
    assert trust_profile_for(SimpleNamespace(name="efficientnet-lite0")).shot_cosines == lite0
    assert trust_profile_for(SimpleNamespace(name="conv4-omniglot")).shot_cosines == GENERIC_SHOT_COSINE_THRESHOLDS
    assert backbone_family(None) == "" and trust_profile_for(None).backbone == ""
