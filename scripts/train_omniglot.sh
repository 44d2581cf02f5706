#!/usr/bin/env bash
# Makes resources/models/omniglot-conv4views-protonet.safetensors: the bundled Conv-4 ProtoNet
# (omniglot-conv4-protonet.safetensors, 7,000 episodes on images_background_small1.zip) trained
# further on the same alphabets with new episodes (seed 1) and a restarted cosine schedule, then
# given a test-time read-out (fewshot_gui/core/embed/conv4.py): the embeddings of 7 fixed views
# (the image, shifted 2 px left/right/up/down, rotated +-8 degrees) averaged and L2-normalised.
# The read-out was chosen on Tagalog (15-way 1-shot), which never appears in the 20-way test
# episodes (it has 17 characters).
#
# Training alphabets: all five of images_background_small1.zip. images_background_small2.zip's
# Greek and Latin are byte-identical copies of small1's, so they add nothing; its three other
# alphabets (Japanese (katakana), Sanskrit, Tagalog) are held out for evaluation (bench/omniglot.py)
# and never seen in training (no --val-data: the run picks nothing on them).
#
# `fewshot train --resume` starts from a checkpoint; this script writes one that holds the bundled
# model's weights, a fresh Adam state and iteration 0, so the run is a plain `fewshot train`
# command from those weights. Run from the repository root:
#     nice -n 5 scripts/train_omniglot.sh [EPISODES] [LR]
# Only the read-out step, on an existing model file:
#     scripts/train_omniglot.sh readout IN.safetensors OUT.safetensors
# Environment: BASE (starting model), DATA, WAY, AUGMENT, SEED, THREADS, HIDDEN, TRAINED, OUT, START.
#
# resources/models/omniglot-conv4aug-protonet.safetensors: three more runs of this script, each from
# the previous one's file, with stronger augmentation and new episodes (3,000 episodes at augment 1.5,
# seed 1; 2,000 at augment 2, seed 2; 3,000 at augment 2, seed 3), then the same read-out; the
# stages' training records are kept in the file (meta["training"]["stages"]):
#     THREADS=4 nice -n 5 scripts/train_omniglot.sh aug
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

readout() {  # IN OUT: IN's network and weights with the test-time views and L2 read-out
"$PY" - "$1" "$2" <<'PY'
import sys

import numpy as np
import torch

from fewshot_gui.core.embed.conv4 import ImageSpec
from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file, save_model

VIEWS = [[0, 0, 0, 1], [2, 0, 0, 1], [-2, 0, 0, 1], [0, 2, 0, 1], [0, -2, 0, 1], [0, 0, 8, 1], [0, 0, -8, 1]]
src, dst = sys.argv[1], sys.argv[2]
meta, tensors = read_model_file(src)
spec = ImageSpec.from_meta(meta["input"])
spec.test_views, spec.embedding_norm = tuple(tuple(map(float, v)) for v in VIEWS), "l2"
meta["input"] = spec.to_meta()
meta["readout"] = {"from": src, "test_views": VIEWS, "embedding_norm": "l2",
                   "chosen_on": "images_background_small2.zip::Tagalog, 15-way 1-shot within alphabet"}
save_model(dst, {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, meta)
load_model(dst)
print(f"wrote {dst}")
PY
}

lineage() {  # OUT BASE STAGE1 STAGE2 ...: OUT's metadata gains BASE and every stage's training record
"$PY" - "$@" <<'PY'
import sys

import numpy as np
import torch

from fewshot_gui.core.models.bundle import load_model
from fewshot_gui.core.models.format import read_model_file, save_model

out, base, stages = sys.argv[1], sys.argv[2], sys.argv[3:]
meta, tensors = read_model_file(out)
stages = [read_model_file(s)[0]["training"] for s in stages]
meta["training"] = {**meta["training"], "started_from": base, "stages": stages,
                    "episodes_after_start": sum(t["episodes"] for t in stages)}
save_model(out, {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, meta)
load_model(out)
PY
}

if [ "${1:-}" = readout ]; then readout "$2" "$3"; exit 0; fi
if [ "${1:-}" = aug ]; then
  FINAL=resources/models/omniglot-conv4aug-protonet.safetensors
  TMP=$(mktemp -d)
  BASE=resources/models/omniglot-conv4views-protonet.safetensors AUGMENT=1.5 SEED=1 OUT=$TMP/s1.safetensors \
    TRAINED=$TMP/s1.raw.safetensors START=$TMP/s1.start.ckpt "$0" 3000 0.0005
  BASE=$TMP/s1.safetensors AUGMENT=2 SEED=2 OUT=$TMP/s2.safetensors \
    TRAINED=$TMP/s2.raw.safetensors START=$TMP/s2.start.ckpt "$0" 2000 0.0005
  BASE=$TMP/s2.safetensors AUGMENT=2 SEED=3 OUT=$FINAL \
    TRAINED=$TMP/s3.raw.safetensors START=$TMP/s3.start.ckpt "$0" 3000 0.0005
  cp "$FINAL" "$TMP/s3.safetensors"
  lineage "$FINAL" resources/models/omniglot-conv4views-protonet.safetensors "$TMP/s1.safetensors" "$TMP/s2.safetensors" "$TMP/s3.safetensors"
  rm -rf "$TMP"
  exit 0
fi
EPISODES=${1:-3000}
LR=${2:-0.0005}
BASE=${BASE:-resources/models/omniglot-conv4-protonet.safetensors}
TRAINED=${TRAINED:-resources/models/omniglot-conv4-protonet-ft.safetensors}
OUT=${OUT:-resources/models/omniglot-conv4views-protonet.safetensors}
DATA=${DATA:-../shared/data/omniglot/images_background_small1.zip}
START=${START:-$TRAINED.start.ckpt}
ARGS=(--method protonet --backbone conv4 --data "$DATA" --rotations --within-group --augment "${AUGMENT:-1}"
      --way "${WAY:-20}" --shot 1 --query 5 --episodes "$EPISODES" --lr "$LR" --checkpoint-every 250
      --seed "${SEED:-1}" --threads "${THREADS:-1}" --hidden "${HIDDEN:-64}")

# The starting checkpoint: the bundled weights, iteration 0, a fresh optimizer (Adam's state is built
# from the first step on).
"$PY" - "$BASE" "$START" "$EPISODES" "$LR" <<'PY'
import sys
from dataclasses import asdict

import numpy as np
import torch

from fewshot_gui.core.models.format import read_model_file, save_model
from fewshot_gui.core.models.nets import build_net, net_state
from fewshot_gui.core.training.config import TrainConfig, net_meta_for

base, start, episodes, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
meta, tensors = read_model_file(base)
cfg = TrainConfig(method="protonet", backbone="conv4", hidden=int(meta["net"]["conv4"]["hidden"]),
                  episodes=episodes, lr=lr)
net_meta = net_meta_for(cfg, None)
if net_meta != meta["net"]:
    raise SystemExit(f"{base}: its network {meta['net']} is not the one `fewshot train` builds ({net_meta})")
net = build_net(net_meta)
net.load_state_dict(net_state(tensors))
groups = torch.optim.Adam(net.parameters(), lr=lr).state_dict()["param_groups"]
save_model(start, {f"net.{k}": v for k, v in net.state_dict().items()},
           {"format": "fewshot-checkpoint", "checkpoint": {
               "iteration": 0, "history": [], "wall_time_s": 0.0, "net": net_meta, "config": asdict(cfg),
               "param_groups": groups, "warm_start": {"from": base, "training": meta.get("training")}}})
print(f"wrote {start} (the weights of {base})")
PY

OMP_NUM_THREADS=1 "$PY" -m fewshot_gui train "${ARGS[@]}" --resume "$START" --out "$TRAINED"
rm -f "$START"
readout "$TRAINED" "$OUT"
rm -f "$TRAINED"
