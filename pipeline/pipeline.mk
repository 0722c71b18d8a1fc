# The reference method as a make DAG: one target per output file, so that `make -j N` runs
# independent branches in parallel and a rerun redoes only what is missing or out of date.
#
#   make -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk [VAR=value ...]
#
# Stages so far (reference-method.md 1-2): dcm2jpg -> JPEGs + meta.h5, mkfolds -> folds.h5,
# seqbuild -> sequences.h5. Missing: cnntrain, embdump, lstmtrain, bagavg (stages 3-6).

ifdef CONFIG
include $(CONFIG)
endif

BIN ?= bin
OUT ?= work
# DICOM: folders (or files) of slices; LABELS: the labels CSV in the challenge format.
DICOM ?= $(error set DICOM to the folders of DICOM slices)
LABELS ?= $(error set LABELS to the labels CSV (challenge format))

THREADS ?= 2
JPEG_QUALITY ?= 95
# 0 keeps each slice's own size.
JPEG_SIZE ?= 0
# 0 reproduces the original scripts (no 12-bit wrap-around fix).
FIX_WRAP ?= 1
FOLDS ?= 5
FOLD_METHOD ?= original
FOLD_SEED ?= 0

# Phantom input (the demo): PHANTOM=1 makes DICOM and LABELS with mkphantom.
PHANTOM ?= 0
PHANTOM_ARGS ?= --series 16 --slices 24-32 --size 256 --seed 1 --test-fraction 0.25

JPEG_DIR = $(OUT)/jpeg
META = $(JPEG_DIR)/meta.h5

DCM2JPG_OPTIONS = --quality $(JPEG_QUALITY) $(if $(filter-out 0,$(JPEG_SIZE)),--size $(JPEG_SIZE)) \
    $(if $(filter 0,$(FIX_WRAP)),--no-fix-wrap)
MKFOLDS_ARGS = -k $(FOLDS) --method $(FOLD_METHOD) --seed $(FOLD_SEED)

# Each stage's settings live in a file that is rewritten only when they change, and the stage
# depends on it: changing a setting on the command line or in a config redoes that stage and
# what follows, and nothing else. (-j does not change outputs and is left out.)
SETTINGS = $(OUT)/.settings
settings_file = $(shell mkdir -p $(SETTINGS) && f=$(SETTINGS)/$(1) && \
    printf '%s\n' '$(strip $(2))' >$$f.new && \
    { cmp -s $$f.new $$f && rm -f $$f.new || mv $$f.new $$f; } && echo $$f)
DCM2JPG_SETTINGS := $(call settings_file,dcm2jpg,$(DCM2JPG_OPTIONS))
MKFOLDS_SETTINGS := $(call settings_file,mkfolds,$(MKFOLDS_ARGS))

.PHONY: all prepare
.DELETE_ON_ERROR:

all: prepare
prepare: $(OUT)/folds.h5 $(OUT)/sequences.h5

ifeq ($(PHANTOM),1)
DICOM = $(OUT)/phantom
LABELS = $(OUT)/phantom/labels.csv
# Written into a scratch folder and renamed, so a killed run never leaves half a dataset.
PHANTOM_SETTINGS := $(call settings_file,mkphantom,$(PHANTOM_ARGS))
$(LABELS): $(PHANTOM_SETTINGS)
	@rm -rf $(OUT)/.phantom.partial
	$(BIN)/mkphantom -j $(THREADS) $(PHANTOM_ARGS) -o $(OUT)/.phantom.partial
	@rm -rf $(OUT)/phantom && mv $(OUT)/.phantom.partial $(OUT)/phantom
META_INPUTS = $(LABELS)
else
META_INPUTS = $(DICOM)
endif

# dcm2jpg exits 4 when some files were skipped as failures (listed with their reason in
# meta.h5); the rest of the pipeline goes on with the slices that converted.
$(META): $(META_INPUTS) $(DCM2JPG_SETTINGS)
	@mkdir -p $(JPEG_DIR)
	$(BIN)/dcm2jpg -j $(THREADS) $(DCM2JPG_OPTIONS) -o $(JPEG_DIR) $(DICOM) || [ $$? -eq 4 ]

$(OUT)/folds.h5: $(META) $(LABELS) $(MKFOLDS_SETTINGS)
	$(BIN)/mkfolds $(MKFOLDS_ARGS) -o $@ $(LABELS) $(META)

$(OUT)/sequences.h5: $(META)
	$(BIN)/seqbuild -o $@ $(META)
