#!/usr/bin/env python
"""Classification pre-training of a Conv-4 embedding (fewshot_gui/core/training/pretrain.py): one
classifier over every training class (x 4 rotations), then the Conv-4 is saved as a ProtoNet model
file, which `fewshot train --resume` (scripts/train_omniglot.sh with BASE=...) can fine-tune episodically.

    .venv/bin/python scripts/pretrain_conv4.py ../shared/data/omniglot/images_background_small1.zip \\
        --out pretrained.safetensors --head linear --epochs 100 --augment 1.5 [--device cuda]

Measured on Tagalog (resources/models/omniglot-conv4aug-protonet.md): up to 90.3% 15-way 1-shot with
the views read-out, below episodic training with strong augmentation (92.1%).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewshot_gui.core.jobs import run_job  # noqa: E402
from fewshot_gui.core.training.pretrain import HEADS, PretrainConfig, pretrain  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="PATH or PATH::GROUP1,GROUP2 (Omniglot-style zips or ImageFolder directories)")
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--augment", type=float, default=1.0)
    p.add_argument("--head", choices=HEADS, default="cosine")
    p.add_argument("--no-rotations", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    cfg = PretrainConfig(data=a.data, out=a.out, hidden=a.hidden, epochs=a.epochs, batch=a.batch, lr=a.lr,
                         augment=a.augment, head=a.head, rotations=not a.no_rotations, seed=a.seed,
                         threads=a.threads, device=a.device,
                         command=" ".join(shlex.quote(x) for x in ["scripts/pretrain_conv4.py", *sys.argv[1:]]))
    meta = run_job(pretrain(cfg), lambda e: print(f"{e.stage} {e.done}/{e.total} {e.message}", flush=True)
                   if e.stage == "pre-training" else None)
    print(f"wrote {a.out} ({meta['training']['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
