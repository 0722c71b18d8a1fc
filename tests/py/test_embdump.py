#!/usr/bin/python3
"""embdump on phantom data with a tiny classifier trained for one epoch by cnntrain (64 px
lossless PPM images, seeded). Checks:
  - splits: train, val and test of FOLDS.h5 partition 'all'; ids sorted; attributes; an empty
    split writes a valid file with N = 0; the file is a predictions file for bagavg;
  - TTA: the hflip (transpose) embedding of an image equals the orig embedding of the flipped
    (transposed) image, made losslessly as PPM; crop none at the native size, where the
    preparation is the identity, so the two runs see the same pixels;
  - the embeddings and outputs equal torchvision's (tests/ref/embdump_ref.py) on the same
    inputs (crop none at the native size), and on inputs prepared independently by
    imgproc_ref (intended crop, resized to 48 px), each with its stated tolerance;
  - --fp16 stores exactly numpy's float16 of the fp32 embedding, also on chosen edge values
    (subnormals, ties, 65504, overflow); --precision bf16 stays close to fp32; without
    FOLDS.h5 the slices are the usable rows of meta.h5;
  - cnntrain's val_loss attribute equals the challenge metric (metric_ref, numpy) of
    embdump's /prob on the validation split with orig only (the same images and model);
  - bad input: missing or damaged image, a checkpoint of another architecture or of no
    ResNeXt, one with a NaN weight (conv1, where a relu could hide it), one whose last batch
    norm scales are 3e38 (finite weights, overflowing outputs), a fold FOLDS.h5 lacks, -o
    naming an input or an existing folder (refused before the model runs), an unknown
    device: exit codes of --help, a message naming the problem, nothing written;
  - --split val --fold 1 with the fold-0 classifier warns that it trained on those slices;
    its own fold 0 does not.
Needs no shared data.
"""
import os
import shutil
import sys

import h5py
import numpy as np

import testlib
from testlib import WORK, check, run, run_ok, run_plain

sys.path.insert(0, testlib.REF_DIR)
import embdump_ref  # noqa: E402
import metric_ref  # noqa: E402

# One engine thread: on a loaded machine two spinning threads made these runs 20 times slower.
os.environ["OMP_NUM_THREADS"] = "1"
TTA = ["orig", "hflip", "transpose"]


def read(path):
    with h5py.File(path, "r") as f:
        out = {name: f[name][()] for name in ("id", "embedding", "prob")}
        out["id"] = out["id"].astype(str)
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v)
                        for k, v in f.attrs.items()}
        if "variants" in f:
            for v in f["variants"]:
                out[v] = (f["variants/%s/embedding" % v][()], f["variants/%s/prob" % v][()])
    return out


def embdump(*args):
    return run_ok("embdump", *args)


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n or n == "out.h5")


def rel_diff(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)) if ref.size else 0.0


# ---- data: a phantom with a test split, PPM images, folds, a one-epoch tiny model ----
ph = testlib.phantom(os.path.join(WORK, "ph"), "--series", "16", "--slices", "6-8", "--size",
                     "64", "--seed", "7", "--prevalence", "0.9", "--test-fraction", "0.25",
                     "-j", "2")
img = os.path.join(WORK, "img")
run_ok("dcm2jpg", "-j", "2", "--format", "ppm", "-o", img, ph)
folds = os.path.join(WORK, "folds.h5")
# 4 folds: 9 labelled patients leave one of 5 folds empty, which mkfolds refuses.
run_ok("mkfolds", "-k", "4", "-o", folds, os.path.join(ph, "labels.csv"),
       os.path.join(img, "meta.h5"))
ckdir = os.path.join(WORK, "ck")
run_ok("cnntrain", "--arch", "tiny", "--size", "64", "--batch", "16", "--micro-batch", "8",
       "--lr", "1e-3", "--seed", "3", "-j", "2", "--fold", "0", "--epochs", "1", "-o", ckdir,
       img, folds)
ckpt = os.path.join(ckdir, "epoch1.h5")
with h5py.File(folds, "r") as f:
    fold_ids = f["id"][()].astype(str)
    fold_of = dict(zip(fold_ids, f["fold"][()]))
    label_of = dict(zip(fold_ids, f["label"][()]))

# ---- splits ----
out = {}
for split in ("all", "train", "val", "test"):
    path = os.path.join(WORK, "e_%s.h5" % split)
    embdump("--split", split, "--per-variant", "-o", path, ckpt, img, folds)
    out[split] = read(path)
a = out["all"]
expect = {"train": [i for i in fold_ids if fold_of[i] >= 0 and fold_of[i] != 0],
          "val": [i for i in fold_ids if fold_of[i] == 0],
          "test": [i for i in fold_ids if fold_of[i] == -1]}
check(list(a["id"]) == sorted(fold_ids) == list(fold_ids),
      "all: %d slices, in FOLDS.h5 order, sorted by strcmp" % len(a["id"]))
for split, ids in expect.items():
    check(list(out[split]["id"]) == ids and len(ids) > 0,
          "%s: %d slices, the rows of FOLDS.h5 with the split's folds" % (split, len(ids)))
row = {i: k for k, i in enumerate(a["id"])}
for split in expect:
    rows = [row[i] for i in out[split]["id"]]
    d = max(float(np.abs(out[split]["embedding"] - a["embedding"][rows]).max()),
            float(np.abs(out[split]["prob"] - a["prob"][rows]).max()))
    check(d <= 1e-5, "%s: embeddings and outputs equal those of the same slices in 'all' "
          "(max difference %.2g, limit 1e-5: other batches)" % (split, d))
attrs = a["attrs"]
want = {"model": "tiny", "fold": 0, "epoch": 1, "split": "all", "size": 64,
        "crop": "intended", "tta": "orig,hflip,transpose", "embed_dim": 512,
        "storage": "float32", "checkpoint": ckpt,
        "subtypes": ",".join(testlib.SUBTYPES)}
bad = {k: attrs.get(k) for k in want if attrs.get(k) != want[k]}
check(not bad and a["embedding"].shape == (len(a["id"]), 512) and a["prob"].shape[1] == 6,
      "attributes %s and shapes %s, %s (wrong: %s)" % (sorted(want), a["embedding"].shape,
                                                      a["prob"].shape, bad))
mean = np.mean([a[v][0] for v in TTA], axis=0)
check(np.abs(a["embedding"] - mean).max() <= 1e-6 and
      np.abs(a["prob"] - np.mean([a[v][1] for v in TTA], axis=0)).max() <= 1e-7,
      "/embedding and /prob are the means of the three /variants")
proc = run("bagavg", "-o", os.path.join(WORK, "sub.csv"), os.path.join(WORK, "e_all.h5"))
check(proc.returncode == 0, "bagavg accepts the file as predictions (exit %d)"
      % proc.returncode)

# An empty split: FOLDS.h5 without its test rows.
notest = os.path.join(WORK, "folds_notest.h5")
with h5py.File(folds, "r") as f, h5py.File(notest, "w") as g:
    keep = f["fold"][()] >= 0
    for name in ("id", "label", "fold"):
        g[name] = f[name][()][keep]
empty = os.path.join(WORK, "made", "by", "embdump", "e_empty.h5")  # folders made too
proc = run_plain("embdump", "--split", "test", "-o", empty, ckpt, img, notest)
e = read(empty) if proc.returncode == 0 else None
check(e is not None and e["embedding"].shape == (0, 512) and e["prob"].shape == (0, 6)
      and "no slices" in proc.stderr,
      "an empty test split: exit %d, N = 0 file in new folders, says '%s'"
      % (proc.returncode, proc.stderr.strip().splitlines()[0] if proc.stderr else ""))

# ---- TTA: a variant of an image equals the plain embedding of the varied image ----
varied = {}
for variant, change in (("hflip", lambda x: x[:, ::-1]), ("transpose", lambda x: x.transpose(
        1, 0, 2))):
    folder = os.path.join(WORK, "img_" + variant)
    os.makedirs(folder)
    from PIL import Image
    for name in os.listdir(img):
        if name.endswith(".ppm"):
            pixels = embdump_ref.load_rgb(os.path.join(img, name))
            Image.fromarray(np.ascontiguousarray(change(pixels))).save(
                os.path.join(folder, name))
    shutil.copy(os.path.join(img, "meta.h5"), folder)
    path = os.path.join(WORK, "e_%s_image.h5" % variant)
    embdump("--tta", "orig", "--crop", "none", "-o", path, ckpt, folder, folds)
    varied[variant] = read(path)
plain_none = os.path.join(WORK, "e_none.h5")
embdump("--crop", "none", "--per-variant", "-o", plain_none, ckpt, img, folds)
n = read(plain_none)
for variant in ("hflip", "transpose"):
    d_emb = float(np.abs(n[variant][0] - varied[variant]["embedding"]).max())
    d_prob = float(np.abs(n[variant][1] - varied[variant]["prob"]).max())
    check(d_emb <= 1e-6 and d_prob <= 1e-7,
          "%s embedding of %d images = orig embedding of the %s images: max difference %.2g "
          "(limit 1e-6), outputs %.2g (limit 1e-7)"
          % (variant, len(n["id"]), variant, d_emb, d_prob))
d_orig = float(np.abs(n["hflip"][0] - n["orig"][0]).max())
check(d_orig > 1e-3, "the flip changes the embedding (max %.3g): the check above can fail"
      % d_orig)

# ---- PyTorch: same inputs (crop none, native size), then independently prepared ones ----
paths = [os.path.join(img, i + ".ppm") for i in n["id"]]
per, ref_emb, ref_prob = embdump_ref.reference(ckpt, paths, "none", 64, TTA)
for variant in TTA:
    de = rel_diff(n[variant][0], per[variant][0])
    dp = float(np.abs(n[variant][1] - per[variant][1]).max())
    check(de <= 1e-5 and dp <= 1e-6,
          "torchvision, same inputs, %s: embedding max difference %.2g of the largest value "
          "(limit 1e-5), outputs %.2g (limit 1e-6)" % (variant, de, dp))
de, dp = rel_diff(n["embedding"], ref_emb), float(np.abs(n["prob"] - ref_prob).max())
check(de <= 1e-5 and dp <= 1e-6, "torchvision, same inputs, TTA mean: embedding %.2g, outputs "
      "%.2g" % (de, dp))

resized = os.path.join(WORK, "e_48.h5")
embdump("--size", "48", "-o", resized, ckpt, img, folds)
r = read(resized)
_, ref_emb, ref_prob = embdump_ref.reference(ckpt, paths, "intended", 48, TTA)
de, dp = rel_diff(r["embedding"], ref_emb), float(np.abs(r["prob"] - ref_prob).max())
# imgproc_ref's OpenCV resize may round a pixel one grey level the other way
# (test_imgproc_parity): a looser limit than for identical inputs.
check(de <= 1e-4 and dp <= 1e-5,
      "torchvision on imgproc_ref's inputs (intended crop, 48 px), TTA mean: embedding "
      "%.2g of the largest value (limit 1e-4), outputs %.2g (limit 1e-5)" % (de, dp))

# ---- fp16 storage, and the slices of meta.h5 without FOLDS.h5 ----
half = os.path.join(WORK, "e_half.h5")
embdump("--fp16", "-o", half, ckpt, img)
h = read(half)
check(list(h["id"]) == list(a["id"]), "without FOLDS.h5: the %d usable rows of meta.h5"
      % len(h["id"]))
with h5py.File(half, "r") as f:
    dtype = f["embedding"].dtype
check(dtype == np.float16 and np.array_equal(h["embedding"], a["embedding"].astype(np.float16))
      and np.array_equal(h["prob"], a["prob"]) and h["attrs"]["storage"] == "float16",
      "--fp16: /embedding is %s, equal to numpy's float16 of the fp32 one" % dtype)

# bf16 arithmetic: close to fp32, not equal (8 mantissa bits in the products).
bf16 = os.path.join(WORK, "e_bf16.h5")
embdump("--precision", "bf16", "-o", bf16, ckpt, img, folds)
b = read(bf16)
de, dp = rel_diff(b["embedding"], a["embedding"]), float(np.abs(b["prob"] - a["prob"]).max())
check(0 < de <= 3e-2 and dp <= 5e-3 and b["attrs"]["precision"] == "bf16",
      "--precision bf16 against fp32: embedding %.2g of the largest value (limit 3e-2), "
      "outputs %.2g (limit 5e-3)" % (de, dp))

# float16 edge cases: a checkpoint whose embedding is a chosen constant per channel (layer4's
# first block outputs 0, its second block's batch norm outputs the bias, which the relu and
# the average pool pass through unchanged): subnormals, ties, the largest finite values,
# overflow to infinity, and values whose rounding carries into the exponent.
edge = np.concatenate([[0.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 1e-7, 6.1e-5, 6.104e-5,
                        0.2499831, 0.99999, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 2047.5, 65504,
                        65519.99, 65520, 1e5, 1e30],
                       np.exp(np.random.default_rng(5).uniform(np.log(1e-9), np.log(1e6),
                                                               512))])[:512].astype(np.float32)
edge_ckpt = os.path.join(WORK, "edge.h5")
shutil.copy(ckpt, edge_ckpt)
with h5py.File(edge_ckpt, "r+") as f:
    sd = f["state_dict"]
    for name, bias in (("layer4.0.bn3", -1e9), ("layer4.0.downsample.1", 0.0)):
        sd[name + ".weight"][...] = 0
        sd[name + ".bias"][...] = bias
    sd["layer4.1.bn3.weight"][...] = 0
    sd["layer4.1.bn3.bias"][...] = edge
edge_out = {}
for flag in ("", "--fp16"):
    path = os.path.join(WORK, "e_edge%s.h5" % flag)
    embdump(*([flag] if flag else []), "--tta", "orig", "--split", "val", "-o", path,
            edge_ckpt, img, folds)
    with h5py.File(path, "r") as f:
        edge_out[flag] = f["embedding"][()]
exact = np.array_equal(edge_out[""], np.broadcast_to(edge, edge_out[""].shape))
with np.errstate(over="ignore"):
    same = np.array_equal(edge_out["--fp16"], edge_out[""].astype(np.float16))
check(exact and same, "--fp16 on %d chosen values from 2^-25 to 1e30 (subnormals, ties, "
      "65504, overflow): the bits of numpy's float16 (embedding = the chosen values: %s)"
      % (len(edge), exact))

# ---- cnntrain's val_loss: the metric of the checkpoint's own validation outputs ----
val_path = os.path.join(WORK, "e_val_orig.h5")
embdump("--split", "val", "--tta", "orig", "-o", val_path, ckpt, img, folds)
v = read(val_path)
labels = np.array([label_of[i] for i in v["id"]])
score, _, _ = metric_ref.score(v["prob"].astype(np.float64), labels)
with h5py.File(ckpt, "r") as f:
    val_loss = float(f.attrs["val_loss"])
check(abs(score - val_loss) <= 1e-6,
      "cnntrain epoch 1 val_loss %.7f = metric_ref of embdump's orig /prob on fold 0 %.7f "
      "(%d slices; difference %.2g, limit 1e-6)" % (val_loss, score, len(v["id"]),
                                                    abs(score - val_loss)))

# ---- bad input ----
bad_dir = os.path.join(WORK, "bad")
os.makedirs(bad_dir)
out_path = os.path.join(bad_dir, "out.h5")


def refused(what, args, code, pattern):
    proc = run_plain("embdump", "-o", out_path, *args)
    first = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    left = leftovers(bad_dir)
    check(proc.returncode == code and pattern in proc.stderr and not left,
          "%s: exit %d (expected %d), '%s', left %s" % (what, proc.returncode, code, first,
                                                     left or "nothing"))


missing = os.path.join(WORK, "img_missing")
shutil.copytree(img, missing)
victim = sorted(n for n in os.listdir(missing) if n.endswith(".ppm"))[3]
os.remove(os.path.join(missing, victim))
refused("a missing image", [ckpt, missing, folds], 3, victim[:-4])
damaged = os.path.join(WORK, "img_damaged")
shutil.copytree(img, damaged)
victim = os.path.join(damaged, sorted(n for n in os.listdir(damaged) if n.endswith(".ppm"))[20])
with open(victim, "r+b") as f:
    f.truncate(40)
refused("a damaged image (cut to 40 bytes)", [ckpt, damaged, folds], 3, victim)

other_arch = os.path.join(WORK, "other_arch.h5")
shutil.copy(ckpt, other_arch)
with h5py.File(other_arch, "r+") as f:
    f.attrs["model"] = "resnext50_32x4d"
refused("a checkpoint whose tensors are not its architecture's", [other_arch, img, folds], 3,
        "does not match model")
not_resnext = os.path.join(WORK, "not_resnext.h5")
shutil.copy(ckpt, not_resnext)
with h5py.File(not_resnext, "r+") as f:
    f.attrs["model"] = "seqmodel"
refused("a checkpoint of another model", [not_resnext, img, folds], 3, "not of a ResNeXt")
refused("a fold FOLDS.h5 lacks", ["--split", "val", "--fold", "7", ckpt, img, folds], 2,
        "has folds 0 to 3")
refused("--split val without FOLDS.h5", ["--split", "val", ckpt, img], 2, "needs FOLDS.h5")
refused("an unknown device", ["--device", "tpu", ckpt, img, folds], 2, "tpu")
for name, tensor, elements, value, pattern in (
        ("nan.h5", "conv1.weight", slice(0, 1), np.nan, "conv1.weight holds a non-finite"),
        ("huge.h5", "layer4.1.bn3.weight", slice(None), 3e38, "is not finite")):
    poisoned = os.path.join(WORK, name)
    shutil.copy(ckpt, poisoned)
    with h5py.File(poisoned, "r+") as f:
        values = f["state_dict/" + tensor][()]
        values.flat[elements] = value
        f["state_dict/" + tensor][...] = values
    refused("%s = %s (%s)" % (tensor, value, name), [poisoned, img, folds], 3, pattern)
folder = os.path.join(WORK, "outdir")
os.makedirs(folder)
proc = run_plain("embdump", "-o", folder, ckpt, img, folds)
check(proc.returncode == 2 and "is a folder" in proc.stderr and "slices (split" not in
      proc.stderr and not os.listdir(folder),
      "-o an existing folder: exit %d before the model runs, '%s'"
      % (proc.returncode, proc.stderr.strip()))
warnings = {}
for held in ("1", "0"):
    proc = run_plain("embdump", "--split", "val", "--fold", held, "-o",
                     os.path.join(WORK, "val_fold%s.h5" % held), ckpt, img, folds)
    warnings[held] = [line for line in proc.stderr.splitlines() if "trained on these" in line]
    check(proc.returncode == 0, "--split val --fold %s: exit %d" % (held, proc.returncode))
check(len(warnings["1"]) == 1 and "warning" in warnings["1"][0] and not warnings["0"],
      "a fold-0 classifier embedding validation fold 1 warns (%s); its own fold 0 does not"
      % warnings["1"])
proc = run_plain("embdump", "-o", folds, ckpt, img, folds)
check(proc.returncode == 2 and "is the input" in proc.stderr,
      "-o naming FOLDS.h5: exit %d, '%s'" % (proc.returncode, proc.stderr.strip()))
with h5py.File(folds, "r") as f:
    check(list(f["id"][()].astype(str)) == list(fold_ids), "FOLDS.h5 left as it was")
help_text = run_plain("embdump", "--help").stdout
check("embdump: 2 also" in help_text and "3 for a missing" in help_text,
      "--help documents exit codes 2 and 3")

testlib.finish("embdump")
