"""Deterministic tensor values shared with the C engine (common/nn/host_ops.c, params.c).

hashed(count, seed, scale, offset)[i] = offset + scale * (2 u - 1), u = hash(seed, i) >> 8
scaled by 2^-24: every step is exact in float32, so numpy and C agree bit for bit.
"""
import math

import numpy as np

M32 = 0xFFFFFFFF


def name_seed(name):
    """FNV-1a (32 bit) of a tensor name."""
    h = 2166136261
    for byte in name.encode():
        h ^= byte
        h = (h * 16777619) & M32
    return h


def hashed(count, seed, scale, offset=0.0):
    with np.errstate(over="ignore"):
        i = np.arange(count, dtype=np.uint32)
        h = i * np.uint32(0x9E3779B1) + np.uint32((seed * 0x85EBCA77) & M32)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
        h *= np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
    u = (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return np.float32(offset) + np.float32(scale) * (np.float32(2.0) * u - np.float32(1.0))


def init_value(name, shape, is_param):
    """The value nn_params_fill_hashed gives the tensor called name."""
    count = int(np.prod(shape)) if len(shape) else 1
    offset = 0.0
    if len(shape) >= 2:
        scale = np.float32(math.sqrt(3.0 / (count // shape[0])))
    elif name.endswith("bn3.weight"):
        scale, offset = 0.1, 0.1
    elif name.endswith("running_var"):
        scale, offset = 0.5, 1.0
    elif is_param and name.endswith(".weight"):
        scale, offset = 0.1, 1.0
    else:
        scale = 0.1
    return hashed(count, name_seed(name), scale, offset).reshape(shape)
