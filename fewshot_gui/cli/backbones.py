"""``fewshot backbones``: list backbones and whether their weights are present."""

from __future__ import annotations


def add_parser(sub):
    return sub.add_parser("backbones", help="list backbones and whether their weights are available offline")


def run(args) -> int:
    from fewshot_gui.core.embed.backbones import list_backbones

    infos = list_backbones()
    w = max((len(i.name) for i in infos), default=10)
    for info in infos:
        mark = "yes" if info.weights_available else "no "
        print(f"{info.name:<{w}}  weights: {mark}  {info.source}")
    return 0
