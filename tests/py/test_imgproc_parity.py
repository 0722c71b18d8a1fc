"""The image input pipeline (common/imgproc.c) against numpy, scipy and OpenCV.

The C side is build/tests/test_imgproc --ops FILE, which runs each listed operation on a PPM
and writes the result raw; tests/ref/imgproc_ref.py computes the same with scipy.ndimage,
cv2 and albumentations' arithmetic. Inputs: windowed real slices (bin/dcm2jpg --format ppm on
a few $DATA/rsna_ich_app_series files), a mkphantom slice, and synthetic edge cases (all black,
a thin line only, a head touching the border, non-square, 1x1, tiny odd shapes).

Tolerances: the C code reproduces OpenCV's fixed-point arithmetic, so the resize and the
shift-scale-rotate are expected to be equal; the stated tolerance is one grey level on at most
0.1% of the values (what a different OpenCV build's vector code could change), and the measured
share is printed. The minimum filter, crop boxes, pad, flips and transpose are exact; the
normalisation is exact in float32 against albumentations' order of operations.
"""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
import imgproc_ref as ref  # noqa: E402
import testlib  # noqa: E402
from testlib import WORK, check  # noqa: E402

BUILD = os.environ.get("BUILD") or os.path.join(testlib.HERE, "..", "..", "build")
PROGRAM = os.path.join(BUILD, "tests", "test_imgproc")
SIZE = 480
# One grey level on at most this share of the values: the stated tolerance of the OpenCV checks.
GREY_SHARE = 1e-3


def write_ppm(path, img):
    h, w = img.shape[:2]
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(np.ascontiguousarray(img, dtype=np.uint8).tobytes())


# ---- inputs ----

def real_slices():
    """Windowed real slices as dcm2jpg writes them (lossless PPM), or [] without $DATA."""
    if not testlib.have_data("real slices", "rsna_ich_app_series", "dcm"):
        return []
    folder = os.path.join(testlib.DATA, "rsna_ich_app_series", "dcm")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".dcm"))
    # The series' ends and middle: skull base, ventricles, vertex.
    chosen = [files[0], files[len(files) // 2], files[-1], files[len(files) // 3]]
    out = os.path.join(WORK, "real")
    testlib.run_ok("dcm2jpg", "--format", "ppm", "-o", out, *chosen)
    return [("real %s" % f[:-4], testlib.load_image(os.path.join(out, f)))
            for f in sorted(os.listdir(out)) if f.endswith(".ppm")]


def phantom_slice():
    folder = testlib.phantom(os.path.join(WORK, "phantom"), "--series", 1, "--slices", 3,
                             "--seed", 4)
    dicoms = []
    for root, _, names in os.walk(folder):
        dicoms += [os.path.join(root, n) for n in names if n.endswith(".dcm")]
    out = os.path.join(WORK, "phantom-ppm")
    testlib.run_ok("dcm2jpg", "--format", "ppm", "-o", out, sorted(dicoms)[1])
    name = [f for f in os.listdir(out) if f.endswith(".ppm")][0]
    return ("phantom", testlib.load_image(os.path.join(out, name)))


def synthetic():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:512, 0:512]
    head = ((xx - 230) / 150.0) ** 2 + ((yy - 215) / 170.0) ** 2 <= 1
    slice_ = np.zeros((512, 512, 3), np.uint8)
    slice_[head] = rng.integers(30, 220, (head.sum(), 3))
    slice_[440:442, 60:460] = 180  # a table line two pixels high
    line_only = np.zeros((512, 512, 3), np.uint8)
    line_only[300, 100:400, 1] = 90
    # A head cut by the left edge of a non-square image: the filter's border mode matters here.
    yy, xx = np.mgrid[0:200, 0:300]
    edge = np.zeros((200, 300, 3), np.uint8)
    edge[((xx + 20) / 120.0) ** 2 + ((yy - 100) / 80.0) ** 2 <= 1] = 120
    edge[150:152, 150:290] = 60
    one = np.full((1, 1, 3), 77, np.uint8)
    return [
        ("slice+line", slice_), ("all-black", np.zeros((512, 512, 3), np.uint8)),
        ("line-only", line_only), ("edge 300x200", edge),
        ("tall 64x180", rng.integers(0, 256, (180, 64, 3)).astype(np.uint8)),
        ("1x1", one), ("1x1 black", np.zeros((1, 1, 3), np.uint8)),
        ("5x7", rng.integers(0, 256, (7, 5, 3)).astype(np.uint8)),
        ("17x3", rng.integers(0, 3, (3, 17, 3)).astype(np.uint8)),
    ]


# ---- running the C side ----

class Ops:
    """Collects operations, runs them in one call of the C program, reads results back."""

    def __init__(self):
        self.lines, self.n = [], 0

    def add(self, words, img):
        self.n += 1
        src = os.path.join(WORK, "in%04d.ppm" % self.n)
        out = os.path.join(WORK, "out%04d.raw" % self.n)
        write_ppm(src, img)
        self.lines.append(" ".join(str(w) for w in words + [src, out]))
        return out

    def run(self):
        spec = os.path.join(WORK, "ops.txt")
        with open(spec, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        proc = subprocess.run([PROGRAM, "--ops", spec], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            sys.exit("test_imgproc --ops failed (exit %d)" % proc.returncode)


def read_u8(path, shape):
    return np.fromfile(path, dtype=np.uint8).reshape(shape)


def read_f32(path, shape):
    return np.fromfile(path, dtype=np.float32).reshape(shape)


def grey_diff(got, want):
    """(largest difference, share of values that differ)."""
    d = np.abs(got.astype(np.int32) - want.astype(np.int32))
    return int(d.max()) if d.size else 0, float((d > 0).mean()) if d.size else 0.0


# ---- the checks ----

def main():
    if not os.path.exists(PROGRAM):
        print("skip: %s is not built (make)" % PROGRAM)
        sys.exit(77)

    images = real_slices() + [phantom_slice()] + synthetic()
    named = dict(images)
    ops = Ops()
    pending = []  # (kind, name, args, out path)

    def want(kind, name, args, words, img):
        pending.append((kind, name, args, ops.add(words, img)))

    for name, img in images:
        h = img.shape[0]
        for size in sorted({max(h // 15, 0), 1, 3, 4, 34}):
            want("minfilter", name, size, ["minfilter", size], img)
        for mode in ("plain", "minfilter"):
            want("crop", name, mode, ["crop", mode], img)
        for mode in ("none", "plain", "minfilter"):
            want("prepare", name, (mode, SIZE), ["prepare", mode, SIZE], img)
        want("prepare", name, ("minfilter", 37), ["prepare", "minfilter", 37], img)
        want("flip", name, None, ["flip"], img)
        want("transpose", name, None, ["transpose"], img)
        want("normalize", name, 1, ["normalize", 1], img)

    # Resizes up, down, to odd shapes; shift-scale-rotate at the ends of its ranges.
    resize_shapes = [(480, 480), (256, 256), (600, 300), (13, 11), (1, 1), (33, 70)]
    ssr_params = [(20, 1.05, 0.05, 0.05), (-20, 0.95, -0.05, -0.05), (7.3, 1.0, 0.0, 0.0),
                  (0, 1, 0.5 / SIZE, 0), (-13.7, 1.021, 0.031, -0.044), (90, 1, 0, 0)]
    for name, img in images:
        for dw, dh in resize_shapes:
            want("resize", name, (dw, dh), ["resize", dw, dh], img)
        for p in ssr_params:
            want("ssr", name, p, ["ssr"] + list(p), img)

    # Prepared 480 images for the augmentations and TTA.
    prepared = [(n, ref.prepare(img, "minfilter", SIZE)) for n, img in images
                if img.shape[0] >= 100][:4]
    for name, img in prepared:
        for variant in ("original", "hflip", "transpose"):
            want("tta", name, variant, ["tta", variant], img)
    # Image indices whose draws cover all eight (hflip, ssr, transpose) combinations.
    seed, epoch, combos, index = 20191114, 2, {}, 0
    while len(combos) < 8 and index < 10000:
        a = ref.sample(ref.stream(seed, epoch, index))
        combos.setdefault((a["hflip"], a["ssr"], a["transpose"]), index)
        index += 1
    for k, (combo, index) in enumerate(sorted(combos.items())):
        name, img = prepared[k % len(prepared)]
        want("augment", name, (seed, epoch, index),
             ["augment", seed, epoch, index], img)
    bench_src = images[0][1]
    bench_out = ops.add(["bench", 20], bench_src)

    ops.run()
    prepared = dict(prepared)

    stats = {}
    for kind, name, args, out in pending:
        img = prepared[name] if kind in ("tta", "augment") else named[name]
        h, w = img.shape[:2]
        key = kind
        if kind == "minfilter":
            got = read_u8(out, (h, w))
            exp = ref.min_filter(img.max(axis=2), args)
            ok = np.array_equal(got, exp)
        elif kind == "crop":
            x0, y0, x1, y1, used = (int(v) for v in open(out).read().split())
            box, from_mode = ref.crop_box(img, args)
            ok = (x0, y0, x1, y1) == box and bool(used) == from_mode
            if not ok:
                print("crop %s %s: C %s, reference %s" % (name, args, (x0, y0, x1, y1, used),
                                                         box + (from_mode,)))
            key = "crop " + args
        elif kind in ("prepare", "resize", "ssr"):
            if kind == "prepare":
                shape = (args[1], args[1], 3)
                exp = ref.prepare(img, args[0], args[1])
            elif kind == "resize":
                shape = (args[1], args[0], 3)
                exp = ref.resize(img, args[0], args[1])
            else:
                shape = img.shape
                exp = ref.shift_scale_rotate(img, *args)
            got = read_u8(out, shape)
            worst, share = grey_diff(got, exp)
            ok = worst <= 1 and share <= GREY_SHARE
            s = stats.setdefault(kind, [0, 0.0, 0])
            s[0] = max(s[0], worst)
            s[1] = max(s[1], share)
            s[2] += got.size
        elif kind in ("flip", "transpose"):
            exp = ref.hflip(img) if kind == "flip" else ref.transpose(img)
            ok = np.array_equal(read_u8(out, exp.shape), exp)
        elif kind == "normalize":
            exp = ref.normalize(ref.transpose(img))
            got = read_f32(out, exp.shape)
            ok = np.array_equal(got, exp)
            text = np.stack([(img[..., c].T / 255.0 - ref.MEAN[c]) / ref.STD[c]
                             for c in range(3)])
            s = stats.setdefault("normalize-textbook", [0.0])
            s[0] = max(s[0], float(np.abs(got - text).max()))
            ok = ok and s[0] < 2e-6
        elif kind == "tta":
            exp = ref.tta(img, args)
            ok = np.array_equal(read_f32(out, exp.shape), exp)
            key = "tta " + args
        elif kind == "augment":
            words = open(out + ".txt").read().split()
            drawn = {"hflip": int(words[0]), "ssr": int(words[1]), "transpose": int(words[2]),
                     "angle": float(words[3]), "scale": float(words[4]),
                     "dx": float(words[5]), "dy": float(words[6])}
            expected_draw = ref.sample(ref.stream(*args))
            exp = ref.augment(img, drawn)
            got = read_f32(out, exp.shape)
            # One grey level, normalised, is 1 / (255 * std) <= 0.0133.
            diff = np.abs(got - exp)
            ok = drawn == expected_draw and diff.max() < 0.014 and \
                (diff > 0).mean() <= GREY_SHARE
            s = stats.setdefault("augment", [0.0, 0.0, []])
            s[0] = max(s[0], float(diff.max()))
            s[1] = max(s[1], float((diff > 0).mean()))
            s[2].append("%d%d%d" % (drawn["hflip"], drawn["ssr"], drawn["transpose"]))
        else:
            raise AssertionError(kind)
        count = stats.setdefault("count " + key, [0, 0])
        count[0] += 1
        count[1] += int(ok)
        if not ok:
            check(False, "%s on %s %s" % (kind, name, args))

    for key in sorted(k for k in stats if k.startswith("count ")):
        n, good = stats[key]
        check(n == good, "%s: %d of %d cases equal the reference" % (key[6:], good, n))
    for kind in ("prepare", "resize", "ssr"):
        worst, share, values = stats[kind]
        check(worst <= 1 and share <= GREY_SHARE,
              "%s vs OpenCV: largest difference %d grey levels, at most %.4f%% of values "
              "differ (%d values; tolerance 1 on %.2f%%)"
              % (kind, worst, 100 * share, values, 100 * GREY_SHARE))
    worst, share, combos_seen = stats["augment"]
    check(len(set(combos_seen)) == 8,
          "augment: draws replayed in the reference, all 8 flip/ssr/transpose combinations "
          "(%s), largest difference %.3g, differing share %.4f%%"
          % (" ".join(sorted(combos_seen)), worst, 100 * share))
    check(stats["normalize-textbook"][0] < 2e-6,
          "normalize: equal to albumentations' float32 arithmetic; within %.2g of "
          "(v / 255 - mean) / std in double" % stats["normalize-textbook"][0])

    # The thin line: both crops agree with the reference; check that it really is dropped,
    # and that the border mode matters on the edge image (so 'reflect' is what was tested).
    box, _ = ref.crop_box(named["slice+line"], "minfilter")
    check(box[3] < 440, "intended crop drops the table line (box %s, line at row 440)"
          % (box,))
    edge = named["edge 300x200"].max(axis=2)
    k = edge.shape[0] // 15
    from scipy import ndimage
    reflect = ref.min_filter(edge, k)
    constant = ndimage.minimum_filter(edge, size=k, mode="constant")
    check(not np.array_equal(reflect, constant),
          "border mode is visible on the edge image: 'reflect' keeps %d pixels, 'constant' %d"
          % (int((reflect > 0).sum()), int((constant > 0).sum())))

    ms = [float(v) for v in open(bench_out).read().split()]
    print("speed on %s (512x512 -> 480x480, one thread): crop with min filter + pad + resize "
          "%.2f ms, plain crop + pad + resize %.2f ms, all augmentations + normalise %.2f ms, "
          "augmentations as drawn %.2f ms" % (images[0][0], ms[0], ms[1], ms[2], ms[3]))
    testlib.finish("imgproc")


if __name__ == "__main__":
    main()
