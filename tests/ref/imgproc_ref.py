"""Reference for common/imgproc.c written with numpy, scipy and OpenCV only (no project code).

The input pipeline of reference-method.md stage 3 the way the original Python stack computed
it: the intended crop as the authors' own crop-with-minimum-filter function did it
(scipy.ndimage.minimum_filter with its defaults, bounding box, widened by the filter size),
falling back to the plain crop and then to no crop where those raise; the square pad; cv2.resize
INTER_LINEAR; albumentations' HorizontalFlip, ShiftScaleRotate (cv2.getRotationMatrix2D about
(width / 2, height / 2), shift added as a fraction of the side, cv2.warpAffine INTER_LINEAR with
BORDER_REPLICATE), Transpose and Normalize (float32), then HWC -> CHW as ToTensor does.

One deliberate difference from the authors' function: it clamped both axes of the widened box
to the image's row count (img.shape[0]), which only matters for non-square images; here each
axis is clamped to its own extent, as the method describes.
"""
import cv2
import numpy as np
from scipy import ndimage

MEAN = (0.22363983, 0.18190407, 0.2523437)
STD = (0.32451536, 0.2956294, 0.31335256)
AUG = {"p_hflip": 0.5, "p_ssr": 0.3, "p_transpose": 0.5,
       "shift": 0.05, "scale": 0.05, "rotate": 20.0}


# ---- crop ----

def min_filter(grey, size):
    """scipy.ndimage.minimum_filter with every default (mode 'reflect', origin 0)."""
    return ndimage.minimum_filter(grey, size=size)


def _bbox(mask):
    """(x0, y0, x1, y1) of the True pixels, half-open; raises IndexError when there are none
    (as the authors' np.where(...)[0][0] did)."""
    cols = np.where(mask.any(axis=0))[0]
    rows = np.where(mask.any(axis=1))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(img, mode):
    """The crop box and whether it came from the mode asked for (False: a fallback)."""
    h, w = img.shape[:2]
    if mode == "none":
        return (0, 0, w, h), True
    flat = img.max(axis=2)
    try:
        plain = _bbox(flat > 0)
    except IndexError:
        return (0, 0, w, h), False
    if mode == "plain":
        return plain, True
    k = h // 15
    try:
        x0, y0, x1, y1 = _bbox(min_filter(flat, k) > 0)
    except IndexError:
        return plain, False
    return (max(0, x0 - k), max(0, y0 - k), min(w, x1 + k), min(h, y1 + k)), True


def pad_square(img, box):
    x0, y0, x1, y1 = box
    part = img[y0:y1, x0:x1]
    side = max(part.shape[:2])
    out = np.zeros((side, side, 3), dtype=np.uint8)
    out[:part.shape[0], :part.shape[1]] = part
    return out


def resize(img, width, height):
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def prepare(img, mode, size):
    box, _ = crop_box(img, mode)
    return resize(pad_square(img, box), size, size)


# ---- augmentation ----

def hflip(img):
    return np.ascontiguousarray(img[:, ::-1])


def transpose(img):
    return np.ascontiguousarray(img.transpose(1, 0, 2))


def shift_scale_rotate(img, angle, scale, dx, dy):
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[0, 2] += dx * w
    matrix[1, 2] += dy * h
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def normalize(img):
    """albumentations' Normalize(mean, std, max_pixel_value=255) then HWC -> CHW."""
    mean = np.array(MEAN, dtype=np.float32)
    mean *= 255.0
    std = np.array(STD, dtype=np.float32)
    std *= 255.0
    denominator = np.reciprocal(std, dtype=np.float32)
    out = img.astype(np.float32)
    out -= mean
    out *= denominator
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def augment(img, aug):
    """aug: dict with hflip, ssr, transpose (0/1), angle, scale, dx, dy."""
    if aug["hflip"]:
        img = hflip(img)
    if aug["ssr"]:
        img = shift_scale_rotate(img, aug["angle"], aug["scale"], aug["dx"], aug["dy"])
    if aug["transpose"]:
        img = transpose(img)
    return normalize(img)


def tta(img, variant):
    return augment(img, {"hflip": variant == "hflip", "ssr": 0,
                         "transpose": variant == "transpose"})


# ---- the sampler: splitmix64, as published by its author ----

MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, state):
        self.state = state & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


def stream(seed, epoch, index):
    """The generator for one (seed, epoch, image): keys mixed in one at a time."""
    g = SplitMix64(seed)
    g.state = g.next() ^ epoch
    g.state = g.next() ^ index
    return SplitMix64(g.next())


def sample(g):
    """Seven draws in a fixed order: hflip, ssr, angle, scale, dx, dy, transpose."""
    def between(lo, hi):
        return lo + (hi - lo) * g.uniform()
    a = {"hflip": int(g.uniform() < AUG["p_hflip"]), "ssr": int(g.uniform() < AUG["p_ssr"])}
    a["angle"] = between(-AUG["rotate"], AUG["rotate"])
    a["scale"] = between(1 - AUG["scale"], 1 + AUG["scale"])
    a["dx"] = between(-AUG["shift"], AUG["shift"])
    a["dy"] = between(-AUG["shift"], AUG["shift"])
    a["transpose"] = int(g.uniform() < AUG["p_transpose"])
    return a
