#!/usr/bin/python3
"""PyTorch side of bench/nn_bench.sh: torchvision's ResNeXt, 2 threads, fp32.

Usage: nn_bench_ref.py MODEL SIZE BATCH eval|train ITERS
One warm-up, then ITERS timed iterations of an eval forward (no_grad) or a training step
(forward, the method's weighted BCE loss, backward, Adam). Prints one "result" line with
images/s and the process's peak resident memory, in the format of nn_bench.c.
"""
import resource
import sys
import time

import torch
import torch.nn as nn
import torchvision


def main():
    model_name, size, batch, mode, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4], int(sys.argv[5])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 6)
    x = torch.rand(batch, 3, size, size) * 2 - 1
    labels = (torch.arange(batch * 6).reshape(batch, 6) % 3 == 0).float()
    bce = nn.functional.binary_cross_entropy_with_logits
    training = mode == "train"
    if training:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    else:
        model.eval()

    times = []
    for it in range(iters + 1):
        t0 = time.perf_counter()
        if training:
            opt.zero_grad()
            logits = model(x)
            loss = (6 * bce(logits, labels) + bce(logits[:, 5], labels[:, 5])) / 7
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)
        if it > 0:
            times.append(time.perf_counter() - t0)
    best = min(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"result side=torch model={model_name} size={size} batch={batch} mode={mode} "
          f"precision=fp32 iters={iters} mean_s={sum(times) / len(times):.4f} best_s={best:.4f} "
          f"images_per_s={batch / best:.4f} peak_rss_mib={rss:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
