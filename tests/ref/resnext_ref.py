#!/usr/bin/python3
"""Reference dump for the C ResNeXt (tests/unit/test_nn_resnext.c), made with torchvision.

Builds the model by name with every tensor from the hashed formula of nn_hashinit.py, then:
  eval:  a forward in eval mode (running statistics) -> logits, embedding
  train: a training forward -> logits, embedding, loss; backward -> every parameter gradient
  steps: Adam steps, each after a forward and backward, then a last forward; the loss of every
         forward, the weight updates (final - initial) and the final buffers.
--full dumps every tensor whole; otherwise each gradient / update / buffer as its L2 norm, max,
and values at fixed positions (a full dump of ResNeXt-101 would be about 1 GiB).

Usage: resnext_ref.py --model NAME --size PX --batch N --out FILE.h5 [--full]
"""
import argparse
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

import nn_hashinit

SAMPLES = 2048  # values kept per tensor in summary mode


class NarrowResNet(ResNet):
    """torchvision's ResNet with a stem width other than 64 (torchvision fixes 64)."""

    def __init__(self, layers, groups, width_per_group, base, num_classes):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = base
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(Bottleneck, base, layers[0])
        self.layer2 = self._make_layer(Bottleneck, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, base * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, base * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(base * 8 * Bottleneck.expansion, num_classes)


def build(name, outputs):
    if name == "tiny":
        return NarrowResNet([2, 2, 2, 2], 4, 8, 16, outputs)
    model = getattr(torchvision.models, name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, outputs)
    return model


def hashed_state(model):
    params = {n for n, _ in model.named_parameters()}
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(tensor)
        else:
            value = nn_hashinit.init_value(name, tuple(tensor.shape), name in params)
            state[name] = torch.from_numpy(value.copy())
    return state


def write_tensor(group, name, value, full):
    """A tensor whole, or as norm / max / values at fixed positions."""
    value = np.ascontiguousarray(value).reshape(-1)
    if full:
        group.create_dataset(name, data=value.astype(np.float32))
        return
    sub = group.create_group(name)
    sub.create_dataset("norm", data=np.array([np.linalg.norm(value.astype(np.float64))]))
    sub.create_dataset("max", data=np.array([np.abs(value).max()], dtype=np.float64))
    if value.size <= SAMPLES:
        pos = np.arange(value.size, dtype=np.int64)
    else:
        seed = nn_hashinit.name_seed(name) ^ 0x5BD1E995
        u = nn_hashinit.hashed(SAMPLES, seed, 0.5, 0.5).astype(np.float64)
        pos = np.unique((u * value.size).astype(np.int64).clip(0, value.size - 1))
    sub.create_dataset("pos", data=pos)
    sub.create_dataset("val", data=value[pos].astype(np.float32))


def loss_fn(logits, labels):
    bce = nn.functional.binary_cross_entropy_with_logits
    return (6 * bce(logits, labels) + bce(logits[:, 5], labels[:, 5])) / 7


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--double", action="store_true", help="compute in float64")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build(args.model, 6)
    model.load_state_dict(hashed_state(model))
    dtype = torch.float64 if args.double else torch.float32
    model = model.to(dtype)
    params = dict(model.named_parameters())
    initial = {n: p.detach().clone() for n, p in params.items()}

    n, size = args.batch, args.size
    x = nn_hashinit.hashed(n * 3 * size * size, nn_hashinit.name_seed("input"), 1.0)
    x = torch.from_numpy(x.reshape(n, 3, size, size).copy()).to(dtype)
    u = nn_hashinit.hashed(n * 6, nn_hashinit.name_seed("labels"), 0.5, 0.5)
    labels = torch.from_numpy((u > 0.6).astype(np.float32).reshape(n, 6)).to(dtype)

    out = h5py.File(args.out, "w")
    for key, value in (("model", args.model), ("size", size), ("batch", n), ("lr", args.lr),
                       ("weight_decay", args.weight_decay), ("steps", args.steps),
                       ("full", int(args.full)), ("double", int(args.double))):
        out.attrs[key] = value
    out.create_dataset("input", data=x.float().numpy())
    out.create_dataset("labels", data=labels.float().numpy())

    # The embedding is the input of the head.
    captured = {}
    model.fc.register_forward_hook(lambda mod, inp, outp: captured.__setitem__("emb", inp[0]))

    model.eval()
    with torch.no_grad():
        logits = model(x)
    out.create_dataset("eval/logits", data=logits.numpy())
    out.create_dataset("eval/embedding", data=captured["emb"].numpy())

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    losses = []
    for step in range(args.steps + 1):
        opt.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, labels)
        losses.append(loss.item())
        if step == args.steps:
            break
        loss.backward()
        if step == 0:
            out.create_dataset("train/logits", data=logits.detach().numpy())
            out.create_dataset("train/embedding", data=captured["emb"].detach().numpy())
            grads = out.create_group("grad")
            for name, p in params.items():
                write_tensor(grads, name, p.grad.numpy(), args.full)
        opt.step()
    out.create_dataset("train/losses", data=np.array(losses))

    updates = out.create_group("update")
    for name, p in params.items():
        write_tensor(updates, name, (p.detach() - initial[name]).numpy(), args.full)
    buffers = out.create_group("buffer")
    for name, b in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buffers.create_dataset(name, data=np.array([b.item()], dtype=np.int64))
        else:
            write_tensor(buffers, name, b.numpy(), args.full)
    out.close()
    print(f"{args.model} {size}px batch {n}: losses {' '.join(f'{v:.6f}' for v in losses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
