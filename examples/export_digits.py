"""Export the handwritten digits that scikit-learn ships as a Trainyard dataset of PNG images.

    python examples/export_digits.py OUT_DIR

writes OUT_DIR/train/<digit>/<index>.png and OUT_DIR/test/<digit>/<index>.png: one folder per class,
8x8 grayscale images (white ink on black, as scikit-learn holds them), nothing downloaded. The split
is deterministic: of each digit's samples, in scikit-learn's order, every fifth goes to `test/`.
Zip OUT_DIR (or upload its files) as one dataset; a template reads it with `dataset_path: train` and
`test_dataset_path: test`, or whole (the digits package finds `train/` and `test/` itself).
"""

from __future__ import annotations

import sys
from pathlib import Path

TEST_EVERY = 5  # every fifth sample of a class is a test sample: 20 %


def export(out_dir: Path) -> dict[str, int]:
    """Write the images; return the number of files per split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {"train": 0, "test": 0}
    seen: dict[int, int] = {}
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        rank = seen.get(label, 0)
        seen[label] = rank + 1
        split = "test" if rank % TEST_EVERY == 0 else "train"
        folder = out_dir / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png", optimize=False)
        counts[split] += 1
    return counts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    counts = export(Path(argv[1]))
    print(f"wrote {counts['train']} training and {counts['test']} test images to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
