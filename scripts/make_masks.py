"""Draw the demo masks of the notebook's "Painting only where you choose" as small PNG files.

    python scripts/make_masks.py

Each mask is a polygon traced by hand over its photo (coordinates in the photo's pixels), filled
white on black and blurred a little for a soft edge, at a quarter of the photo's size (masks are
resized to each layer's resolution anyway). Writes assets/masks/dog.png (the dog in
assets/inputs/dog.jpg) and assets/masks/horses_sky.png (the sky above the hills in
assets/inputs/horses.jpg).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]

#: (photo, its size in px, polygon in the photo's pixel coordinates)
MASKS = {
    "dog.png": (
        (768, 576),
        [
            (232, 228),
            (262, 221),
            (292, 226),
            (306, 246),
            (300, 282),
            (290, 302),
            (281, 360),
            (286, 420),
            (300, 440),
            (311, 466),
            (296, 476),
            (271, 470),
            (268, 497),
            (279, 515),
            (252, 532),
            (200, 537),
            (160, 527),
            (144, 506),
            (134, 470),
            (132, 420),
            (139, 370),
            (150, 330),
            (175, 301),
            (204, 281),
            (210, 255),
        ],
    ),
    "horses_sky.png": (
        (773, 512),
        [
            (0, 0),
            (773, 0),
            (773, 142),
            (700, 152),
            (640, 160),
            (580, 172),
            (520, 188),
            (470, 196),
            (420, 190),
            (360, 178),
            (320, 168),
            (290, 170),
            (262, 196),
            (230, 200),
            (190, 176),
            (150, 160),
            (110, 152),
            (60, 148),
            (0, 150),
        ],
    ),
}


def draw(size: tuple[int, int], polygon: list[tuple[int, int]], shrink: int = 4) -> Image.Image:
    """A white-on-black ``L`` image of ``polygon`` with a soft edge, ``shrink`` times smaller than
    ``size``."""
    big = Image.new("L", size, 0)
    ImageDraw.Draw(big).polygon(polygon, fill=255)
    small = big.resize((size[0] // shrink, size[1] // shrink), Image.Resampling.LANCZOS)
    return small.filter(ImageFilter.GaussianBlur(1.5))


def main() -> None:
    folder = ROOT / "assets" / "masks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, polygon) in MASKS.items():
        draw(size, polygon).save(folder / name, optimize=True)
        print("wrote", folder / name)


if __name__ == "__main__":
    main()
