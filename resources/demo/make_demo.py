"""Regenerate the built-in demo from the Omniglot "small background 1" zip (MIT licence).

    python resources/demo/make_demo.py [--zip PATH] [--seed 2015]

Five characters from five different alphabets, 20 drawings each (by 20 different people). A
seeded shuffle puts 5 drawings of each character in ``support/<class>/`` (original file names
kept) and the other 15 in the flat ``query/`` folder under names that do not reveal the class
(``q001.png`` ... ``q075.png``, in shuffled order). ``query_truth.csv`` (``path,label``, path
relative to ``query/``) records the answer. Image bytes are copied unchanged from the zip.
Same zip + same seed -> the same files, byte for byte.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ZIP = REPO / ".." / "shared" / "data" / "omniglot" / "images_background_small1.zip"
DEFAULT_LICENSE = DEFAULT_ZIP.parent / "LICENSE"

# class name -> (alphabet, character folder) inside the zip
CLASSES = {
    "balinese_char01": ("Balinese", "character01"),
    "early_aramaic_char09": ("Early_Aramaic", "character09"),  # a circle with a cross
    "greek_lambda": ("Greek", "character11"),
    "korean_char18": ("Korean", "character18"),                # a Pi-like shape
    "latin_k": ("Latin", "character11"),
}
SHOTS = 5
QUERIES = 15


def build(zip_path: Path, out: Path, seed: int, license_path: Path | None) -> None:
    rng = random.Random(seed)
    with zipfile.ZipFile(zip_path) as zf:
        members = [n for n in zf.namelist() if n.endswith(".png")]
        support: dict[str, list[tuple[str, bytes]]] = {}
        queries: list[tuple[str, bytes]] = []  # (label, bytes)
        for label, (alphabet, char) in CLASSES.items():
            names = sorted(n for n in members if n.split("/")[1:3] == [alphabet, char])
            if len(names) < SHOTS + QUERIES:
                raise SystemExit(f"{zip_path}: {alphabet}/{char} has {len(names)} drawings, "
                                 f"need {SHOTS + QUERIES}")
            rng.shuffle(names)
            support[label] = [(n.rsplit("/", 1)[1], zf.read(n)) for n in names[:SHOTS]]
            queries += [(label, zf.read(n)) for n in names[SHOTS:SHOTS + QUERIES]]
    rng.shuffle(queries)

    for sub in ("support", "query"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for label, files in support.items():
        d = out / "support" / label
        d.mkdir(parents=True)
        for name, data in files:
            (d / name).write_bytes(data)
    (out / "query").mkdir(parents=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for i, (label, data) in enumerate(queries, 1):
        name = f"q{i:03d}.png"
        (out / "query" / name).write_bytes(data)
        writer.writerow([name, label])
    (out / "query_truth.csv").write_text(buf.getvalue(), encoding="utf-8", newline="")
    if license_path is not None and license_path.is_file():
        shutil.copyfile(license_path, out / "LICENSE-omniglot.txt")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="images_background_small1.zip")
    ap.add_argument("--license", type=Path, default=DEFAULT_LICENSE, help="Omniglot LICENSE file")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: this folder)")
    ap.add_argument("--seed", type=int, default=2015)
    args = ap.parse_args(argv)
    if not args.zip.is_file():
        print(f"error: {args.zip} not found; pass --zip PATH to images_background_small1.zip",
              file=sys.stderr)
        return 2
    build(args.zip, args.out, args.seed, args.license)
    n = sum(1 for _ in (args.out / "query").iterdir())
    print(f"wrote {len(CLASSES)} classes x {SHOTS} support images and {n} query images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
