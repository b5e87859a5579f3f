"""Export the iris flowers that scikit-learn ships as a Trainyard dataset of CSV files.

    python examples/export_iris.py OUT_DIR

writes OUT_DIR/train/iris.csv and OUT_DIR/test/iris.csv: a header row, the four measurements, and
the species as the last column (`y`), as UiPath AI Center's example reads it. Nothing is downloaded.
The split is deterministic: of each species' samples, in scikit-learn's order, every fifth is a test
sample.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

TEST_EVERY = 5
HEADER = ["sepal_length", "sepal_width", "petal_length", "petal_width", "y"]


def export(out_dir: Path) -> dict[str, int]:
    """Write the two CSV files; return the number of rows of each."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows: dict[str, list[list[object]]] = {"train": [], "test": []}
    seen: dict[int, int] = {}
    for features, label in zip(iris.data, iris.target, strict=True):
        rank = seen.get(int(label), 0)
        seen[int(label)] = rank + 1
        split = "test" if rank % TEST_EVERY == 0 else "train"
        rows[split].append([*(float(x) for x in features), iris.target_names[label]])
    for split, found in rows.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        with open(out_dir / split / "iris.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(HEADER)
            writer.writerows(found)
    return {split: len(found) for split, found in rows.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    counts = export(Path(argv[1]))
    print(f"wrote {counts['train']} training and {counts['test']} test rows to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
