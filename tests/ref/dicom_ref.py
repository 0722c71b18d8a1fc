"""Reference for dcm2jpg written with pydicom and numpy only (no project code).

Stage 1 of reference-method.md the way the original pipeline computed it: pydicom's
pixel_array, float64 rescale, the three windows clipped with integer halving of the width,
minus each channel's minimum, / width * 255, truncated to uint8. Also the per-slice metadata
as pydicom reads it, for checking meta.h5 field by field.
"""
import math

import numpy as np
import pydicom

# (centre, width): brain, subdural, bone -> channels 0, 1, 2
WINDOWS = [(40, 80), (80, 200), (40, 380)]


def read(path):
    return pydicom.dcmread(path, force=True)


def rescale(ds):
    """Slope and intercept; 1 and 0 when the tags are absent."""
    slope = float(ds.RescaleSlope) if "RescaleSlope" in ds else 1.0
    intercept = float(ds.RescaleIntercept) if "RescaleIntercept" in ds else 0.0
    return slope, intercept


def wrap_fix_applies(ds):
    """The usual test for shifted 12-bit CT data (as in the public RSNA notebooks)."""
    _, intercept = rescale(ds)
    return (str(ds.get("Modality", "")) == "CT" and int(ds.BitsStored) == 12
            and int(ds.PixelRepresentation) == 0 and int(intercept) > -100)


def stored_values(ds, fix_wrap=True):
    """pydicom's pixel_array (first frame), and the intercept to use with it."""
    pixels = ds.pixel_array
    if pixels.ndim == 3:
        pixels = pixels[0]
    slope, intercept = rescale(ds)
    if fix_wrap and wrap_fix_applies(ds):
        # int64 so that the + 1000 cannot overflow the stored dtype
        pixels = pixels.astype(np.int64) + 1000
        pixels[pixels >= 4096] -= 4096
        intercept = -1000.0
    return pixels, slope, intercept


def window(ds, fix_wrap=True):
    """HxWx3 uint8, channel k = window k."""
    pixels, slope, intercept = stored_values(ds, fix_wrap)
    hu = pixels * slope + intercept
    channels = []
    for centre, width in WINDOWS:
        low, high = centre - width // 2, centre + width // 2
        clipped = np.clip(hu, low, high)
        scaled = (clipped - clipped.min()) / width * 255
        channels.append(scaled.astype(np.uint8))
    return np.stack(channels, axis=-1)


def _floats(ds, keyword, count):
    value = ds.get(keyword)
    if value is None:
        return [math.nan] * count
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    if len(values) < count:
        return [math.nan] * count
    return [float(v) for v in values[:count]]


def _first(ds, keyword):
    value = ds.get(keyword)
    if value is None or value == "":
        return math.nan
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


def header(path):
    """The fields of one meta.h5 row as pydicom reads them."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    slope, intercept = rescale(ds)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""
    return {
        "id": str(ds.get("SOPInstanceUID", "")),
        "patient_id": str(ds.get("PatientID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "position": _floats(ds, "ImagePositionPatient", 3),
        "orientation": _floats(ds, "ImageOrientationPatient", 6),
        "pixel_spacing": _floats(ds, "PixelSpacing", 2),
        "slope": slope,
        "intercept": intercept,
        "window_center": _first(ds, "WindowCenter"),
        "window_width": _first(ds, "WindowWidth"),
        "rows": int(ds.get("Rows", 0)),
        "columns": int(ds.get("Columns", 0)),
        "bits_allocated": int(ds.get("BitsAllocated", 0)),
        "bits_stored": int(ds.get("BitsStored", 0)),
        "high_bit": int(ds.get("HighBit", 0)),
        "pixel_representation": int(ds.get("PixelRepresentation", 0)),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "modality": str(ds.get("Modality", "")),
        "transfer_syntax": ts,
        "instance_number": int(ds.get("InstanceNumber", 0) or 0),
    }
