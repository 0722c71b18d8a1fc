"""The original method's stage 1 in Python, for timing dcm2jpg against it.

Per slice: pydicom read, float64 windowing in numpy (rescale, three clipped windows, minus
the minimum, / width * 255, uint8), OpenCV imencode at quality 95, file write. One process,
one thread. Prints "SECONDS SLICES" on stdout.

usage: dcm2jpg_ref.py OUTDIR ROUNDS FILE...
"""
import os
import sys
import time
import warnings

import cv2
import numpy as np
import pydicom

WINDOWS = [(40, 80), (80, 200), (40, 380)]


def convert(path, out_dir):
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    channels = []
    for centre, width in WINDOWS:
        clipped = np.clip(hu, centre - width // 2, centre + width // 2)
        channels.append(((clipped - clipped.min()) / width * 255).astype(np.uint8))
    image = np.stack(channels, axis=-1)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok, path
    with open(os.path.join(out_dir, str(ds.SOPInstanceUID) + ".jpg"), "wb") as f:
        f.write(encoded.tobytes())


def main():
    out_dir, rounds, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore")  # RSNA IDs are not valid UIDs
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    for _ in range(rounds):
        for path in files:
            convert(path, out_dir)
    print("%.4f %d" % (time.perf_counter() - start, rounds * len(files)))


if __name__ == "__main__":
    main()
