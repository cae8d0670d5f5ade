"""Train the embedded demo model (DigitsCNN on scikit-learn's digits) and export it with BN kept.

    python tools/train_digits.py --out models/digits_cnn.onnx

Takes well under a minute on 2 CPU cores; prints the test top-1.
"""

import argparse
import time

import numpy as np
import torch

from dfc.models.digits_cnn import MEAN, STD, DigitsCNN, load_digits_split
from dfc.models.export import export_keep_bn


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = (images.astype(np.float32) / 255.0 - np.float32(MEAN[0])) / np.float32(STD[0])
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models/digits_cnn.onnx")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    d = load_digits_split()
    x, y = to_tensor(d["train_images"]), torch.from_numpy(d["train_labels"])
    xt, yt = to_tensor(d["test_images"]), torch.from_numpy(d["test_labels"])
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,))  # light augmentation: one-pixel shifts
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    export_keep_bn(model, xt[:1], args.out, mean=MEAN, std=STD)
    print(f"trained {args.epochs} epochs in {time.time() - t0:.1f} s; test top-1 {100 * acc:.2f} %; wrote {args.out}")


if __name__ == "__main__":
    main()
