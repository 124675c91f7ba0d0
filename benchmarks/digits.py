"""Write scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped with
scikit-learn: no download) as PNG image folders for ``archc train``, with a fixed
stratified 80/20 split: ``OUT/train/<digit>/*.png`` (1,437 images), ``OUT/val/<digit>/*.png``
(360 images). Pixels 0..16 become grey 0..255.

usage: python benchmarks/digits.py OUT

`make digits` writes them and trains Xception on them with both backends
(docs/training.md records the command, the time and the accuracy).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_digits(out: Path) -> dict[str, int]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train, val = train_test_split(index, test_size=0.2, random_state=0, stratify=digits.target)
    counts = {}
    for split, picked in (("train", train), ("val", val)):
        for i in sorted(picked):
            folder = out / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
        counts[split] = len(picked)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    counts = write_digits(args.out)
    print(f"wrote {counts['train']} training and {counts['val']} validation images to {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
