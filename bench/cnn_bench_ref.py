#!/usr/bin/python3
"""PyTorch side of bench/cnn_bench.sh: the loops of cnntrain and embdump in PyTorch.

Usage: cnn_bench_ref.py train|embed MODEL SIZE BATCH MICRO JPEG_DIR FOLDS.h5 WORKERS

Images as the original pipeline read them (OpenCV decode), prepared and augmented by
tests/ref/imgproc_ref.py (minimum-filter crop, square pad, cv2 resize; flip p 0.5,
shift-scale-rotate p 0.3, transpose p 0.5; Normalize) in a torch DataLoader with WORKERS
worker processes. torchvision's ResNeXt with a 6-output head, 2 threads.
  train: every fully labelled slice of FOLDS.h5, one epoch, shuffled; each step of BATCH images
         runs in micro-batches of MICRO with gradients accumulated, the method's weighted BCE,
         Adam lr 2e-5.
  embed: every slice, eval mode, batches of BATCH; each batch forwarded as the original, its
         horizontal flip and its transpose; the pooled features and sigmoid outputs averaged.
Prints one "result" line: images/s (training: every step but the first, a warm-up; embedding:
every batch) and the share of that time spent waiting for the loader.
"""
import os
import sys
import time

import cv2
import h5py
import numpy as np
import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "ref"))
import imgproc_ref  # noqa: E402


class Slices(torch.utils.data.Dataset):
    def __init__(self, paths, labels, size, augment):
        self.paths, self.labels, self.size, self.augment = paths, labels, size, augment

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        img = cv2.cvtColor(cv2.imread(self.paths[k], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        img = imgproc_ref.prepare(img, "intended", self.size)
        if self.augment:
            rng = np.random.default_rng((os.getpid(), k))
            a = imgproc_ref.AUG
            aug = {"hflip": rng.random() < a["p_hflip"], "ssr": rng.random() < a["p_ssr"],
                   "angle": rng.uniform(-a["rotate"], a["rotate"]),
                   "scale": 1 + rng.uniform(-a["scale"], a["scale"]),
                   "dx": rng.uniform(-a["shift"], a["shift"]),
                   "dy": rng.uniform(-a["shift"], a["shift"]),
                   "transpose": rng.random() < a["p_transpose"]}
            x = imgproc_ref.augment(img, aug)
        else:
            x = imgproc_ref.normalize(img)
        return torch.from_numpy(x), torch.from_numpy(self.labels[k].astype(np.float32))


def main():
    mode, model_name, size, batch, micro, jpeg_dir, folds, workers = sys.argv[1:9]
    size, batch, micro, workers = int(size), int(batch), int(micro), int(workers)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    with h5py.File(folds, "r") as f:
        ids = f["id"][()].astype(str)
        labels = f["label"][()]
    if mode == "train":
        keep = (labels >= 0).all(axis=1)
        ids, labels = ids[keep], labels[keep]
    paths = [os.path.join(jpeg_dir, i + ".jpg") for i in ids]
    data = Slices(paths, labels, size, mode == "train")
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=mode == "train",
                                         num_workers=workers, prefetch_factor=2)
    model = getattr(torchvision.models, model_name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 6)
    bce = nn.functional.binary_cross_entropy_with_logits
    if mode == "train":
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-5)
    else:
        model.eval()
        captured = []
        model.fc.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))

    steps, images, busy, waited = 0, 0, 0.0, 0.0
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        n = len(x)
        if mode == "train":
            opt.zero_grad()
            for start in range(0, n, micro):
                xs, ys = x[start:start + micro], y[start:start + micro]
                logits = model(xs)
                loss = (6 * bce(logits, ys) + bce(logits[:, 5], ys[:, 5])) / 7
                (loss * (len(xs) / n)).backward()
            opt.step()
        else:
            with torch.no_grad():
                emb, prob = 0, 0
                for v in (x, torch.flip(x, [3]), x.transpose(2, 3).contiguous()):
                    captured.clear()
                    prob = prob + torch.sigmoid(model(v))
                    emb = emb + captured[0]
                emb, prob = emb / 3, prob / 3
        t2 = time.perf_counter()
        steps += 1
        # Training leaves out the first step (warm-up), as the C side's log allows; embedding
        # counts every batch, as embdump's summary line does.
        if steps > 1 or mode == "embed":
            images += n
            busy += t2 - t0
            waited += t1 - t0
    print(f"result side=torch mode={mode} model={model_name} size={size} batch={batch} "
          f"micro={micro} workers={workers} steps={steps} timed_images={images} "
          f"images_per_s={images / busy:.3f} data_wait_pct={100 * waited / busy:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
