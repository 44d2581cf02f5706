"""``fewshot backbones``: list backbones and whether their weights are present."""

from __future__ import annotations

from fewshot_gui.core.embed.backbones import list_backbones


def add_parser(sub):
    return sub.add_parser("backbones", help="list backbones and whether their weights are available offline",
                          description="List the pretrained backbones (--backbone NAME), whether their "
                                      "weights are on this machine, and where they are read from.")


def run(args) -> int:
    infos = list_backbones()
    w = max((len(i.name) for i in infos), default=10)
    for info in infos:
        mark = "yes" if info.weights_available else "no "
        print(f"{info.name:<{w}}  weights: {mark}  {info.source}")
    return 0
