"""Fetch the training photos of fast_style_transfer.ipynb from Debian packages (once).

    python scripts/fetch_photos.py                 # -> data/photos/*.jpg (43 photos, 512 px)
    python scripts/fetch_photos.py --out my_photos --size 384

Downloads four packages with ``apt-get download`` (no root needed, nothing installed), unpacks them
with ``dpkg-deb -x`` into a temporary folder and keeps only the *photos* named below: nature and
everyday photos, no drawings, renders, logos, charts, paintings or chessboards. Each is resized
to ``--size`` px on its long side and written as JPEG; ``data/`` is git-ignored. darknet's dog,
horses and person are left out on purpose: they are ``assets/inputs/``, the held-out photos on
which the notebook measures quality, never trained on. Licences: see assets/SOURCES.md. Existing
files are kept (never overwritten); delete the folder to start afresh.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

PLASMA = "usr/share/wallpapers/{}/contents/images"  # one folder per wallpaper, several sizes each
MATE = "usr/share/backgrounds/mate/nature/{}.jpg"
OPENCV = "usr/share/doc/opencv-doc/examples/data/{}"
DARKNET = "usr/share/darknet/data/{}.jpg"

#: package -> (path pattern inside it, names of the photos to keep)
TRAIN = {
    "plasma-workspace-wallpapers": (
        PLASMA,
        [
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "Volna",
            "summer_1am",
        ],
    ),
    "mate-backgrounds": (
        MATE,
        [
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        ],
    ),
    "opencv-doc": (
        OPENCV,
        [
            "fruits.jpg",
            "baboon.jpg",
            "aloeL.jpg",
            "building.jpg",
            "orange.jpg",
            "apple.jpg",
            "butterfly.jpg",
            "messi5.jpg",
            "squirrel_cls.jpg",
            "leuvenA.jpg",
            "aero1.jpg",
            "rubberwhale1.png",
            "ela_original.jpg",
            "board.jpg",
            "home.jpg",
            "../alphamat/input_images/plant.jpg",
        ],
    ),
    "darknet": (DARKNET, ["eagle", "giraffe", "kite"]),
}


def download(packages: list[str], folder: Path) -> Path:
    """``apt-get download`` each package into ``folder`` and unpack it; the unpacked tree's root."""
    tree = folder / "tree"
    tree.mkdir()
    done = subprocess.run(
        ["apt-get", "download", *packages], cwd=folder, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(
            f"apt-get download failed ({done.stderr.strip()}). Run `apt-get update` first, "
            "or use any folder of photos instead (the notebook's photo_dir)."
        )
    for deb in sorted(folder.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    return tree


def source_file(tree: Path, pattern: str, name: str) -> Path:
    """The file of photo ``name``; for a KDE wallpaper folder, its largest picture."""
    path = tree / pattern.format(name)
    if path.is_dir():
        return max(path.iterdir(), key=lambda p: p.stat().st_size)
    return path


def keep(tree: Path, wanted: dict, out: Path, size: int) -> int:
    """Resize the wanted photos to ``size`` px (long side) as JPEGs in ``out``; how many written."""
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for package, (pattern, names) in wanted.items():
        for name in names:
            target = out / f"{package.split('-')[0]}_{Path(name).stem}.jpg"
            if target.exists():
                continue
            with Image.open(source_file(tree, pattern, name)) as img:
                img.draft("RGB", (size, size))
                img = img.convert("RGB")
                img.thumbnail((size, size), Image.Resampling.LANCZOS)
                img.save(target, quality=92)
            written += 1
    return written


def nst_photos(folder: Path) -> list[Path]:
    """The photos of ``folder`` (what the notebook will train on)."""
    return sorted(p for p in folder.glob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--size", type=int, default=512, help="long side in px (default 512)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = download(sorted(TRAIN), Path(tmp))
        written = keep(tree, TRAIN, args.out, args.size)
    print(
        f"{args.out}: {written} photos written, {len(nst_photos(args.out))} in all "
        f"(long side {args.size} px)"
    )


if __name__ == "__main__":
    main()
