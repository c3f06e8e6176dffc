"""A user's own data, generated: images + a wide CSV with blank unknown cells (train) and a fully
labelled CSV (val), as a practitioner would bring them; and a small model trained on it."""
from pathlib import Path

import numpy as np

from mlrpl.cli import main
from mlrpl.data import read_dataset
from mlrpl.data.synthetic import make_shapes_dataset


def make_own_csv_data(root: Path, unknown_rate: float = 0.3) -> Path:
    root = Path(root)
    shapes = make_shapes_dataset(root / "images", n_train=36, n_val=12, size=64, num_classes=4,
                                 seed=0)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        ls = read_dataset("yolo", shapes, split)
        lines = ["image," + ",".join(ls.classes)]
        for path, row in zip(ls.paths(), ls.labels):
            cells = ["" if split == "train" and rng.random() < unknown_rate
                     else ("1" if v == 1 else "0") for v in row]
            lines.append(f"{Path(path).relative_to(root)}," + ",".join(cells))
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def train_args(data: Path, run: Path, *extra) -> list[str]:
    return ["train", "data.dataset=csv", f"data.root={data / 'train.csv'}",
            f"data.val_root={data / 'val.csv'}", "data.train_split=null", "data.val_split=null",
            "data.image_size=64", "train.epochs=2", "train.batch_size=8", "optim.lr=0.01",
            "train.tensorboard=false", "train.progress=never", f"model.cache_dir={data / 'cache'}",
            f"run.dir={run}", *extra]


def train_own_model(data: Path, run: Path, *extra) -> Path:
    assert main(train_args(data, run, *extra)) == 0
    return run / "best.pt"
