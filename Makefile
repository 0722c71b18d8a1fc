# ichpipe: intracranial hemorrhage detection on head CT.
#   make            build every program into bin/
#   make test       install what is missing, build, run the tests (tests/run.sh)
#   make demo       install what is missing, build, run the pipeline on phantom data
#   make test-long  the long tests only (full-size models, full-size round trips)
#   make test-asan  the tests again under AddressSanitizer and UBSan (bin-asan/); the NN
#                   parity tests run on the tiny model only (ResNeXt-101 is too slow there);
#                   a second test-asan waits for the first one's tests to end
#   make bench      side-by-side benchmarks (bench/README.md)
#   make deps       install the Debian packages the build and tests need

SAN ?=
ifeq ($(SAN),1)
BUILD ?= build-asan
BIN ?= bin-asan
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT = -O1
else
BUILD ?= build
BIN ?= bin
SANFLAGS =
OPT = -O2
endif

CC ?= cc
CXX ?= c++
WARN = -Wall -Wextra
# -fno-math-errno: nothing reads errno after a math call, and with it sqrtf and friends
# vectorise (Adam over the sequence model's 268 M parameters: measured 1.6x faster).
CFLAGS = -std=c11 $(OPT) -g $(WARN) -fno-math-errno -D_GNU_SOURCE -pthread $(SANFLAGS)
CXXFLAGS = -std=c++17 $(OPT) -g $(WARN) -pthread $(SANFLAGS)
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo unknown)

CONFIG = $(BUILD)/config.mk
-include $(CONFIG)

CPPFLAGS = -Icommon -I$(BUILD) $(HDF5_CFLAGS)

# The version recorded in outputs and printed by --version lives in a generated header that is
# rewritten only when it changes, so that only the two files using it are recompiled.
VERSION_H = $(BUILD)/version.h
$(shell mkdir -p $(BUILD) && printf '#define ICH_VERSION "%s"\n' '$(VERSION)' >$(VERSION_H).new && \
    { cmp -s $(VERSION_H).new $(VERSION_H) && rm -f $(VERSION_H).new || mv $(VERSION_H).new $(VERSION_H); })
LIBS = $(DCMTK_LIBS) $(HDF5_LIBS) $(JPEG_LIBS) $(ZLIB_LIBS) $(DNNL_LIBS) -lm -pthread

# MPI and NCCL (mk/probe.sh) reach only common/dist.c. A build without MPI runs each program
# as one process; `make MPI=0 BUILD=build-nompi BIN=bin-nompi` makes one. dist.c uses NCCL
# only in a build with the CUDA backend (ICH_HAVE_CUDA); otherwise --as-needed drops it.
ifneq ($(MPI),0)
ifeq ($(HAVE_MPI),1)
$(BUILD)/common/dist.o: CPPFLAGS += $(MPI_CFLAGS) -DICH_HAVE_MPI
LIBS += $(MPI_LIBS)
ifeq ($(HAVE_NCCL),1)
$(BUILD)/common/dist.o: CPPFLAGS += $(NCCL_CFLAGS) -DICH_HAVE_NCCL
LIBS += -Wl,--push-state,--as-needed $(NCCL_LIBS) -Wl,--pop-state
endif
endif
endif

PROGRAMS = $(patsubst tools/%.c,%,$(wildcard tools/*.c))
COMMON_C = $(wildcard common/*.c common/nn/*.c)
COMMON_CXX = $(wildcard common/*.cpp)
COMMON_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(COMMON_C)) $(patsubst %.cpp,$(BUILD)/%.o,$(COMMON_CXX))
UNIT_TESTS = $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))

# The CUDA backend (common/nn/*.cu) when mk/probe.sh found nvcc, cudart, cuDNN and cuBLAS under
# CUDA_HOME / CUDNN_HOME; kernels for CUDA_ARCHS (SASS) plus PTX of the last one for newer
# GPUs. Without it, "cuda" devices answer with the reason (common/nn/backend_select.c).
export CUDA_HOME ?= /usr/local/cuda
export CUDNN_HOME ?= $(CUDA_HOME)
export NCCL_HOME ?= $(CUDA_HOME)
CUDA_ARCHS ?= 80 90
# The backend is a plugin, libichpipe_cuda.so beside the programs, that nn_backend_open loads
# on the first "cuda" device: programs never load CUDA's libraries (hundreds of MiB) unless
# asked to, and run where they are absent. The plugin takes die() and the log from the program
# (-rdynamic).
ifeq ($(HAVE_CUDA),1)
CUDA_PLUGIN = $(BUILD)/libichpipe_cuda.so
CPPFLAGS += -DICH_HAVE_CUDA
LIBS += -rdynamic -ldl
NVCCFLAGS = -std=c++17 $(OPT) -g -lineinfo -fmad=false -Xcompiler -fPIC,-Wall,-Wextra,-pthread \
    $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
    -gencode arch=compute_$(lastword $(CUDA_ARCHS)),code=compute_$(lastword $(CUDA_ARCHS))
endif

# GPU checks (tests/gpu/run.sh): the parity and benchmark program, and the folder of binaries
# and Debian libraries that carries them to a GPU machine without this build's libraries.
GPU_BUNDLE ?= $(BUILD)/gpu-bundle

.PHONY: all deps test test-long test-asan demo bench clean gpu-bundle
.DELETE_ON_ERROR:

all: $(addprefix $(BIN)/,$(PROGRAMS)) $(addprefix $(BUILD)/tests/,$(UNIT_TESTS))

$(CONFIG): mk/probe.sh
	@mkdir -p $(BUILD)
	@CC="$(CC)" CXX="$(CXX)" sh mk/probe.sh $@

$(BUILD)/common/opt.o $(BUILD)/common/h5io.o: $(VERSION_H)

# The engine's parallel loops run on oneDNN's OpenMP team (common/nn/team.h).
$(BUILD)/common/nn/team.o: CFLAGS += -fopenmp

$(BUILD)/libichpipe.a: $(COMMON_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c $(CONFIG) $(wildcard common/*.h common/nn/*.h tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cpp $(CONFIG) $(wildcard common/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@

# C++ linker because of the DCMTK wrapper. Programs are linked under a hidden temporary name
# and renamed into place: a link that fails (a file mid-edit, another make writing the same
# objects) leaves the previous program, never a missing or half-written one under a test run.
LINK_TMP = $(dir $@).$(notdir $@).tmp$$$$
$(BIN)/%: $(BUILD)/tools/%.o $(BUILD)/libichpipe.a
	@mkdir -p $(BIN)
	$(CXX) $(CXXFLAGS) $^ -o $(LINK_TMP) $(LIBS) && mv -f $(LINK_TMP) $@

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libichpipe.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $^ -o $(LINK_TMP) $(LIBS) && mv -f $(LINK_TMP) $@

$(BUILD)/%.o: %.cu $(CONFIG) $(wildcard common/*.h common/nn/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(CPPFLAGS) $(CUDA_CFLAGS) $(NVCCFLAGS) -c $< -o $@

all: $(BUILD)/tests/gpu_parity

ifeq ($(HAVE_CUDA),1)
all: $(CUDA_PLUGIN) $(BIN)/libichpipe_cuda.so

$(CUDA_PLUGIN): $(patsubst %.cu,$(BUILD)/%.o,$(wildcard common/nn/*.cu))
	$(CXX) -shared $^ -o $(LINK_TMP) $(CUDA_LIBS) && mv -f $(LINK_TMP) $@

$(BIN)/libichpipe_cuda.so: $(CUDA_PLUGIN)
	@mkdir -p $(BIN)
	cp $< $(LINK_TMP) && mv -f $(LINK_TMP) $@
endif

$(BUILD)/tests/gpu_parity: $(BUILD)/tests/gpu/gpu_parity.o $(BUILD)/libichpipe.a
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $^ -o $(LINK_TMP) $(LIBS) && mv -f $(LINK_TMP) $@

gpu-bundle: all
	@sh tests/gpu/bundle.sh $(BUILD) $(BIN) $(GPU_BUNDLE)

deps:
	@sh mk/deps.sh

test: deps
	@$(MAKE) --no-print-directory all
	@BIN=$(BIN) BUILD=$(BUILD) sh tests/run.sh

test-long: deps
	@$(MAKE) --no-print-directory all
	@ICH_LONG_TESTS=1 TESTS=$${TESTS:-_long} BIN=$(BIN) BUILD=$(BUILD) sh tests/run.sh

# One test-asan at a time: a second one would rebuild bin-asan/ under the first one's tests.
# Each step waits for the lock on build-asan/.lock, so a second run builds before or after
# the first one's tests, never during them.
ASAN_LOCK = build-asan/.lock
test-asan: deps
	@mkdir -p build-asan
	@flock -n $(ASAN_LOCK) true || echo "test-asan: another make test-asan uses build-asan/" \
	    "and bin-asan/: waiting for it"
	@flock $(ASAN_LOCK) $(MAKE) --no-print-directory SAN=1 all
	@BIN=bin-asan BUILD=build-asan ASAN_OPTIONS=detect_leaks=1 \
	    UBSAN_OPTIONS=print_stacktrace=1 NN_TEST_MODELS=tiny flock $(ASAN_LOCK) sh tests/run.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@sh pipeline/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@sh bench/run.sh

clean:
	rm -rf build build-asan bin bin-asan
