"""A tiny learnable image-folder dataset for the training tests (PIL only)."""

from __future__ import annotations

from pathlib import Path


def make_image_folder(root: Path, per_class: int = 12) -> Path:
    """Four classes a small CNN learns in a few steps: solid colours with a darker square
    in a random place, as PNG and JPEG of assorted sizes."""
    import random

    from PIL import Image, ImageDraw

    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
    rng = random.Random(0)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (40 + rng.randint(0, 40), 40 + rng.randint(0, 40))
            img = Image.new("RGB", size, tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in colour))
            x, y = rng.randint(0, 20), rng.randint(0, 20)
            ImageDraw.Draw(img).rectangle([x, y, x + 15, y + 15], fill=tuple(c // 2 for c in colour))
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def damaged_png(path: Path) -> Path:
    """A PNG whose header, size, mode and end marker are whole (it passes the check before
    step 1) but whose pixel data is not: it fails to decode during the run."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT") + 8
    for k in range(start, start + 40):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    return path
