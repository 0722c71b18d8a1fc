#!/usr/bin/python3
"""Reference for embdump (tools/embdump.c) made with torchvision, numpy and OpenCV only.

A checkpoint's state_dict goes into the torchvision model of resnext_ref.build (strict load),
eval mode; each image is prepared by imgproc_ref (crop, square pad, cv2 resize, Normalize) and
each test-time variant made there (flip, transpose of the prepared image). Results per image:
the input of the head (the embedding) and the sigmoid of the logits, per variant and their mean.

Usage: embdump_ref.py --ckpt CKPT.h5 --crop MODE --size N [--tta orig,hflip,transpose]
       --out OUT.h5 IMAGE...
OUT.h5 holds /embedding, /prob (the means) and /variants/<name>/{embedding,prob}.
"""
import argparse
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imgproc_ref  # noqa: E402
import resnext_ref  # noqa: E402

VARIANTS = {"orig": "original", "hflip": "hflip", "transpose": "transpose"}


def load_model(ckpt):
    """The checkpoint's model in eval mode, every tensor loaded strictly."""
    with h5py.File(ckpt, "r") as f:
        name = f.attrs["model"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        state = {k: torch.from_numpy(np.asarray(v[()])) for k, v in f["state_dict"].items()}
    outputs = state["fc.weight"].shape[0]
    model = resnext_ref.build(name, outputs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_rgb(path):
    """RGB uint8 of a PPM or JPEG (PIL decodes both)."""
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def inputs(paths, crop, size, variant):
    """N x 3 x size x size float32: imgproc_ref's prepared, varied, normalised images."""
    out = []
    for path in paths:
        prepared = imgproc_ref.prepare(load_rgb(path), crop, size)
        out.append(imgproc_ref.tta(prepared, VARIANTS[variant]))
    return np.stack(out).astype(np.float32)


def embed(model, x, batch=16):
    """(embedding, sigmoid outputs) of x, as numpy float32."""
    captured = []
    hook = model.fc.register_forward_hook(lambda mod, inp, outp: captured.append(inp[0]))
    probs = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            probs.append(torch.sigmoid(model(torch.from_numpy(x[start:start + batch]))))
    hook.remove()
    if not probs:
        return np.zeros((0, model.fc.in_features), np.float32), np.zeros((0, 6), np.float32)
    return (torch.cat(captured).numpy().astype(np.float32),
            torch.cat(probs).numpy().astype(np.float32))


def reference(ckpt, paths, crop, size, tta):
    """{variant: (embedding, prob)} and the means over the variants."""
    model = load_model(ckpt)
    per = {v: embed(model, inputs(paths, crop, size, v)) for v in tta}
    mean_embedding = np.mean([per[v][0] for v in tta], axis=0, dtype=np.float64)
    mean_prob = np.mean([per[v][1] for v in tta], axis=0, dtype=np.float64)
    return per, mean_embedding, mean_prob


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--crop", default="intended")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--tta", default="orig,hflip,transpose")
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tta = args.tta.split(",")
    per, embedding, prob = reference(args.ckpt, args.images, args.crop, args.size, tta)
    with h5py.File(args.out, "w") as f:
        f["embedding"] = embedding.astype(np.float32)
        f["prob"] = prob.astype(np.float32)
        for v in tta:
            f["variants/%s/embedding" % v] = per[v][0]
            f["variants/%s/prob" % v] = per[v][1]
    print("%d images, %s: embedding %s" % (len(args.images), args.tta, embedding.shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
