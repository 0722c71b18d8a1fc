"""List the GPU code in an object's fat binaries: one line per entry, "sm_80" (machine code)
or "compute_90" (PTX). Used where the CUDA toolkit has no cuobjdump.

The container: a 16-byte header (magic 0xBA55ED50, version, header size, payload size), then
entries, each with its own header: kind (1 PTX, 2 ELF) at 0, header size at 4, payload size at
8, target architecture (major * 10 + minor) at 28.
"""
import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)


def archs(data):
    found = []
    start = data.find(MAGIC)
    while start >= 0:
        header_size, payload = struct.unpack_from("<HQ", data, start + 6)
        at, end = start + header_size, start + header_size + payload
        while at < end:
            kind, entry_header, size = struct.unpack_from("<HxxIQ", data, at)
            arch = struct.unpack_from("<I", data, at + 28)[0]
            found.append(("sm_%d" if kind == 2 else "compute_%d") % arch)
            at += entry_header + size
        start = data.find(MAGIC, end)
    return found


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        entries = archs(f.read())
    if not entries:
        sys.exit("%s: no fat binary found" % sys.argv[1])
    print("\n".join(entries))
