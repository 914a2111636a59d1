"""Train the small feature classifier shipped for a built-in dataset (used by fewstep.metrics).

    python scripts/train_feature_classifier.py --dataset digits          # ~1 min on 2 CPU cores
    python scripts/train_feature_classifier.py --dataset fashion-mnist   # ~5 min

Writes src/fewstep/assets/classifier-<dataset>.safetensors (config in the metadata) and prints the
held-out accuracy. digits has no test split: a fixed 20% of it is held out.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fewstep.data import load_dataset
from fewstep.metrics.classifier import SmallClassifier, classifier_path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=["digits", "fashion-mnist"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.dataset == "digits":
        ds = load_dataset("digits")
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
        n_test = len(ds) // 5
        xte, yte = ds.images[perm[:n_test]], ds.labels[perm[:n_test]]
        xtr, ytr = ds.images[perm[n_test:]], ds.labels[perm[n_test:]]
        epochs = args.epochs or 60
    else:
        tr, te = load_dataset(args.dataset, split="train"), load_dataset(args.dataset, split="test")
        xtr, ytr, xte, yte = tr.images, tr.labels, te.images, te.labels
        epochs = args.epochs or 4
    model = SmallClassifier(in_channels=xtr.shape[1], num_classes=int(ytr.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(xtr) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 128):
            idx = perm[i:i + 128]
            x = xtr[idx]
            # light augmentation: random shifts by up to 1 pixel
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, (dx, dy), (2, 3))
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (torch.cat([model(xte[i:i + 512]).argmax(1) for i in range(0, len(xte), 512)]) == yte).float().mean()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} held-out accuracy {acc:.4f} ({time.time() - t0:.0f}s)")
    path = classifier_path(args.dataset)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(model.config), "accuracy": f"{acc:.4f}", "dataset": args.dataset})
    print(f"wrote {path} (held-out accuracy {acc:.4f})")


if __name__ == "__main__":
    main()
