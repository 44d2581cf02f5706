"""Rewrite model files of the earlier ``.fsm`` format as ``.safetensors`` model files.

    .venv/bin/python scripts/convert_models.py resources/models/*.fsm

Each FILE.fsm becomes FILE.safetensors beside it (or ``--out-dir``); the new file is read back
and must hold the same metadata and bit-identical tensors, or it is removed and the script
fails. The ``.fsm`` files are left in place (fewshot_gui still reads them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewshot_gui.core.errors import ModelFileError
from fewshot_gui.core.models.format import EXTENSION, convert_legacy_file, read_model_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.fsm")
    parser.add_argument("--out-dir", type=Path, help="write the converted files here (default: beside each input)")
    parser.add_argument("--overwrite", action="store_true", help="replace .safetensors files that already exist")
    args = parser.parse_args(argv)
    failed = 0
    for src in args.files:
        dst = None if args.out_dir is None else args.out_dir / (src.stem + EXTENSION)
        try:
            out = convert_legacy_file(src, dst, overwrite=args.overwrite)
        except ModelFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        _, tensors = read_model_file(out)
        size = sum(t.nbytes for t in tensors.values())
        print(f"{src} -> {out}: {len(tensors)} tensors ({size} bytes), metadata and tensors read back identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
