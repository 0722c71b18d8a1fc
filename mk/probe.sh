#!/bin/sh
# Find the libraries by compiling and linking a tiny program against each, and write the
# flags to a make fragment. Usage: probe.sh OUTPUT.mk
set -u
out=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cc=${CC:-cc}
cxx=${CXX:-c++}
found=""
missing=""

# probe NAME LANG HEADER-AND-CALL FLAGS...
probe() {
    name=$1 lang=$2 body=$3
    shift 3
    if [ "$lang" = c ]; then src=$dir/$name.c; comp=$cc; else src=$dir/$name.cpp; comp=$cxx; fi
    printf '%s\n' "$body" >"$src"
    if $comp "$src" -o "$dir/$name" "$@" >"$dir/$name.log" 2>&1; then
        found="$found $name"
        return 0
    fi
    missing="$missing $name"
    return 1
}

hdf5_flags=$(pkg-config --cflags --libs hdf5 2>/dev/null || echo "-lhdf5")
dcmtk_libs="-ldcmjpls -ldcmjpeg -ldcmimage -ldcmimgle -ldcmdata -loflog -lofstd"

{
    echo "# written by mk/probe.sh"
    if probe hdf5 c '#include <hdf5.h>
int main(void) { return H5open() < 0; }' $hdf5_flags; then
        echo "HDF5_CFLAGS = $(pkg-config --cflags hdf5 2>/dev/null)"
        echo "HDF5_LIBS = $(pkg-config --libs hdf5 2>/dev/null || echo -lhdf5)"
    fi
    if probe jpeg c '#include <stdio.h>
#include <jpeglib.h>
int main(void) { struct jpeg_compress_struct c; (void)c; return jpeg_std_error(0) != 0; }' -ljpeg
    then
        echo "JPEG_LIBS = -ljpeg"
    fi
    probe zlib c '#include <zlib.h>
int main(void) { return zlibVersion()[0] == 0; }' -lz && echo "ZLIB_LIBS = -lz"
    if probe dcmtk cxx '#include <dcmtk/dcmdata/dctk.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
int main() { DJDecoderRegistration::registerCodecs(); DJLSDecoderRegistration::registerCodecs();
return 0; }' $dcmtk_libs; then
        echo "DCMTK_LIBS = $dcmtk_libs"
    fi
    if probe dnnl c '#include <dnnl.h>
int main(void) { return dnnl_version() == 0; }' -ldnnl; then
        echo "HAVE_DNNL = 1"
        echo "DNNL_LIBS = -ldnnl"
    fi
    if probe mpi c '#include <mpi.h>
int main(int c, char **v) { MPI_Init(&c, &v); return MPI_Finalize(); }' \
        $(pkg-config --cflags --libs ompi-c 2>/dev/null || echo -lmpi); then
        echo "HAVE_MPI = 1"
        echo "MPI_CFLAGS = $(pkg-config --cflags ompi-c 2>/dev/null)"
        echo "MPI_LIBS = $(pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)"
    fi
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    if [ -x "$nvcc" ]; then
        found="$found cuda"
        echo "HAVE_CUDA = 1"
        echo "NVCC = $nvcc"
    else
        missing="$missing cuda"
    fi
    echo "PROBE_FOUND =$found"
    echo "PROBE_MISSING =$missing"
} >"$out.tmp"
mv "$out.tmp" "$out"

echo "probe: found:${found:- none}; missing:${missing:- none}"
for need in hdf5 jpeg zlib dcmtk; do
    case " $missing " in
    *" $need "*)
        echo "probe: $need is required; run 'make deps' (log: see mk/probe.sh)" >&2
        exit 1 ;;
    esac
done
exit 0
