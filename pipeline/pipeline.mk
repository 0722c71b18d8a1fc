# The reference method as a make DAG: one target per output file, so that `make -j N` runs
# independent branches in parallel and a rerun redoes only what is missing or out of date.
#
#   make -f pipeline/pipeline.mk CONFIG=pipeline/configs/demo.mk [VAR=value ...] [TARGET]
#
# Stages (reference-method.md): dcm2jpg -> JPEGs + meta.h5; mkfolds -> folds.h5; seqbuild ->
# sequences.h5; cnntrain per trained fold -> one checkpoint per epoch; embdump per (fold, epoch,
# split) -> embeddings; lstmtrain per (fold, epoch) -> bagged validation and test predictions;
# bagavg -> the submission CSV (and its score when the test labels are known).
# `make ... dag` prints the nodes and their dependencies (lsf/submit reads it).

PIPELINE_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
ifdef CONFIG
include $(CONFIG)
endif

BIN ?= bin
OUT ?= work
ifneq ($(words $(OUT)),1)
$(error OUT='$(OUT)': the output folder's path must not hold spaces (make cannot name such \
    files as targets); the programs themselves take any path)
endif
# DICOM: folders (or files) of slices; LABELS: the labels CSV in the challenge format.
DICOM ?= $(error set DICOM to the folders of DICOM slices)
LABELS ?= $(error set LABELS to the labels CSV (challenge format))
# Labels of the test slices, when known (phantom data): the submission is then scored.
TEST_LABELS ?=

THREADS ?= 2
# The NN backend of cnntrain, embdump and lstmtrain: cpu, cuda or cuda:N.
DEVICE ?= cpu
DEVICE_OPTION = $(if $(filter-out cpu,$(DEVICE)),--device $(DEVICE))

# Stage 1-2: images, folds, sequences.
JPEG_QUALITY ?= 95
# 0 keeps each slice's own size.
JPEG_SIZE ?= 0
# 0 reproduces the original scripts (no 12-bit wrap-around fix).
FIX_WRAP ?= 1
FOLDS ?= 5
FOLD_METHOD ?= original
FOLD_SEED ?= 0

# Stage 3: the image classifier, one run per trained fold.
FOLDS_TRAINED ?= 0 1 2
CNN_ARCH ?= resnext101_32x8d
# Imported WSL weights (pth2h5, README "Pretrained weights"); empty: random initialisation.
CNN_INIT ?= weights/wsl.h5
CNN_EPOCHS ?= 5
CNN_SIZE ?= 480
CNN_LR ?= 2e-5
CNN_BATCH ?= 64
CNN_MICRO_BATCH ?= 16
CNN_CROP ?= intended
CNN_PRECISION ?= fp32
CNN_SEED ?= 1
# A mid-epoch checkpoint every N steps (0: per epoch only); a killed run resumes from it.
CNN_SAVE_EVERY ?= 0

# Stage 4: embeddings of every split, per fold and classifier epoch.
EMB_TTA ?= orig,hflip,transpose
EMB_FP16 ?= 0

# Stage 5: the sequence model, one run per (fold, classifier epoch).
LSTM_HIDDEN ?= 2048
LSTM_EPOCHS ?= 12
LSTM_BAG ?= 12
LSTM_LR ?= 1e-5
LSTM_LR_DECAY ?= 0.95
LSTM_BATCH ?= 4
LSTM_SEED ?= 1
LSTM_PAD_LIKE_ORIGINAL ?= 0

# Stage 6: submission clipping.
CLIP ?= 1e-5

# Phantom input (the demo): PHANTOM=1 makes DICOM and LABELS with mkphantom.
PHANTOM ?= 0
PHANTOM_ARGS ?= --series 16 --slices 24-32 --size 256 --seed 1 --test-fraction 0.25
ifeq ($(PHANTOM),1)
DICOM = $(OUT)/phantom
LABELS = $(OUT)/phantom/labels.csv
# mkphantom writes test_labels.csv only for a --test-fraction above 0 (the last one given
# counts, as --test-fraction F or --test-fraction=F).
PHANTOM_TEST_FRACTION := $(shell awk 'BEGIN { f = 0; for (i = 1; i < ARGC; i++) \
    if (ARGV[i] == "--test-fraction") f = ARGV[++i] + 0; \
    else if (sub(/^--test-fraction=/, "", ARGV[i])) f = ARGV[i] + 0; print f }' $(PHANTOM_ARGS))
TEST_LABELS = $(if $(filter-out 0,$(PHANTOM_TEST_FRACTION)),$(OUT)/phantom/test_labels.csv)
endif

# Commands put before a program, e.g. LAUNCH_cnntrain='mpirun -np 4' (lsf/submit sets them).
LAUNCH_cnntrain ?=
LAUNCH_embdump ?=
LAUNCH_lstmtrain ?=

include $(PIPELINE_DIR)lsf.mk

JPEG_DIR = $(OUT)/jpeg
META = $(JPEG_DIR)/meta.h5
FOLDS_H5 = $(OUT)/folds.h5
SEQUENCES = $(OUT)/sequences.h5
SUBMISSION = $(OUT)/submission.csv
SPLITS = train val test
CNN_EPOCH_LIST = $(shell seq 1 $(CNN_EPOCHS))

DCM2JPG_OPTIONS = --quality $(JPEG_QUALITY) \
    $(if $(filter-out 0,$(JPEG_SIZE)),--size $(JPEG_SIZE)) \
    $(if $(filter 0,$(FIX_WRAP)),--no-fix-wrap)
MKFOLDS_ARGS = -k $(FOLDS) --method $(FOLD_METHOD) --seed $(FOLD_SEED)
CNN_OPTIONS = --arch $(CNN_ARCH) --epochs $(CNN_EPOCHS) --size $(CNN_SIZE) --lr $(CNN_LR) \
    --batch $(CNN_BATCH) --micro-batch $(CNN_MICRO_BATCH) --crop $(CNN_CROP) \
    --precision $(CNN_PRECISION) --seed $(CNN_SEED) --save-every $(CNN_SAVE_EVERY) \
    $(if $(CNN_INIT),--init $(CNN_INIT))
EMB_OPTIONS = --tta $(EMB_TTA) $(if $(filter 1,$(EMB_FP16)),--fp16)
LSTM_OPTIONS = --hidden $(LSTM_HIDDEN) --epochs $(LSTM_EPOCHS) --bag $(LSTM_BAG) \
    --lr $(LSTM_LR) --lr-decay $(LSTM_LR_DECAY) --batch $(LSTM_BATCH) --seed $(LSTM_SEED) \
    $(if $(filter 1,$(LSTM_PAD_LIKE_ORIGINAL)),--pad-like-original)

# Each stage's settings live in a file that is rewritten only when they change, and the stage
# depends on it: changing a setting on the command line or in a config redoes that stage and
# what follows, and nothing else. Thread counts, the device and launchers do not change outputs
# and are left out. (The temporary name carries the shell's PID: concurrent cluster jobs parse
# this file at the same time.) A run that only looks (make -n, make -q, `dag`, `lsf-resources`,
# lsf/submit --dry-run) writes nothing: a changed setting then names a missing file
# (<stage>.changed), so the stage shows as out of date without its outputs being touched.
SETTINGS = $(OUT)/.settings
LOOK_ONLY := $(strip $(filter dag lsf-resources,$(MAKECMDGOALS)) \
    $(findstring n,$(firstword -$(MAKEFLAGS))) $(findstring q,$(firstword -$(MAKEFLAGS))))

# Options of a training program that a resumed run takes as they are now: they say how far the
# run goes and how often it saves, never what its finished epochs hold. A training stage's
# settings key leaves them out, so that raising --epochs or --bag extends a run (--resume)
# instead of clearing it; any other change still clears it.
RESUMABLE_OPTIONS = --epochs --bag --save-every
# $(call split_options,PART,OPTIONS): of OPTIONS (each with its value, flags alone), the
# resumable ones with their values (PART=resumable) or all the others (PART=key).
split_options = $(if $(2),$(if $(filter $(RESUMABLE_OPTIONS),$(firstword $(2))),\
    $(if $(filter resumable,$(1)),$(wordlist 1,2,$(2))) \
        $(call split_options,$(1),$(wordlist 3,$(words $(2)),$(2))),\
    $(if $(filter key,$(1)),$(firstword $(2))) \
        $(call split_options,$(1),$(wordlist 2,$(words $(2)),$(2)))))
# A settings file also stands for TEXT when its text less the resumable options is TEXT: the
# files of a training run from before the key left them out hold them, and still resume.
settings_same = $(and $(wildcard $(SETTINGS)/$(1)),$(findstring \
    |$(strip $(2))|,|$(strip $(call split_options,key,$(file <$(SETTINGS)/$(1))))|))
ifeq ($(LOOK_ONLY),)
settings_write = $(shell mkdir -p $(SETTINGS) && f=$(SETTINGS)/$(1) && \
    printf '%s\n' '$(strip $(2))' >$$f.new$$$$ && \
    { cmp -s $$f.new$$$$ $$f && rm -f $$f.new$$$$ || mv $$f.new$$$$ $$f; } && echo $$f)
else
settings_write = $(shell f=$(SETTINGS)/$(1) && \
    { printf '%s\n' '$(strip $(2))' | cmp -s - $$f 2>/dev/null && echo $$f || echo $$f.changed; })
endif
settings_file = $(if $(call settings_same,$(1),$(2)),$(SETTINGS)/$(1),$(call \
    settings_write,$(1),$(2)))
$(SETTINGS)/%.changed: ;

DCM2JPG_SETTINGS := $(call settings_file,dcm2jpg,$(DCM2JPG_OPTIONS))
MKFOLDS_SETTINGS := $(call settings_file,mkfolds,$(MKFOLDS_ARGS))
CNN_SETTINGS := $(call settings_file,cnntrain,$(call split_options,key,$(CNN_OPTIONS)))
EMB_SETTINGS := $(call settings_file,embdump,$(EMB_OPTIONS))
LSTM_SETTINGS := $(call settings_file,lstmtrain,$(call split_options,key,$(LSTM_OPTIONS)))
# lstmtrain's val.h5 and test.h5 bag its last epochs: another --epochs or --bag reruns it,
# resumed (a classifier run's length is in its targets' names, one checkpoint per epoch).
LSTM_LENGTH_SETTINGS := $(call settings_file,lstmtrain-length,\
    $(call split_options,resumable,$(LSTM_OPTIONS)))
# The bags also depend on the runs they average: fewer folds or classifier epochs leave no
# newer input behind to redo them.
BAG_SETTINGS := $(call settings_file,bagavg,--clip $(CLIP) $(TEST_LABELS) \
    folds $(FOLDS_TRAINED) classifier-epochs $(CNN_EPOCHS))

# A training run resumes from its folder when every file there is newer than every input
# (lstmtrain's length settings aside); otherwise (a changed input or settings key) the folder
# is cleared and the run starts afresh.
define clear_if_stale
@for f in $$(find $(1) -maxdepth 1 -name '*.h5' 2>/dev/null); do \
    for p in $(2); do \
        [ "$$f" -nt "$$p" ] || { echo "$(1): $$p is newer: training afresh"; rm -rf $(1); \
            break 2; }; \
    done; \
done
endef

.PHONY: all prepare dag
.DELETE_ON_ERROR:

all: $(SUBMISSION) $(foreach f,$(FOLDS_TRAINED),$(OUT)/validation/f$(f).scores)
prepare: $(FOLDS_H5) $(SEQUENCES)

ifeq ($(PHANTOM),1)
# Written into a scratch folder and renamed, so a killed run never leaves half a dataset.
PHANTOM_SETTINGS := $(call settings_file,mkphantom,$(PHANTOM_ARGS))
$(LABELS) $(TEST_LABELS) &: $(PHANTOM_SETTINGS)
	@rm -rf $(OUT)/.phantom.partial
	$(BIN)/mkphantom -j $(THREADS) $(PHANTOM_ARGS) -o $(OUT)/.phantom.partial
	@rm -rf $(OUT)/phantom && mv $(OUT)/.phantom.partial $(OUT)/phantom
META_INPUTS = $(LABELS)
else
META_INPUTS = $(DICOM)
# Inputs that do not exist stop make here, named (make alone would only say that it has no
# rule to make them). `dag` needs no inputs; words make expands itself (globs, ~) or that
# are not paths (@LIST) are left to it.
ifneq ($(filter-out dag,$(or $(MAKECMDGOALS),all)),)
input_is_pattern = $(or $(findstring *,$(1)),$(findstring ?,$(1)),$(findstring [,$(1)),\
    $(filter ~% @%,$(1)))
missing_inputs := $(strip $(foreach word,$(DICOM) $(LABELS),\
    $(if $(or $(call input_is_pattern,$(word)),$(wildcard $(word))),,$(word))))
ifneq ($(missing_inputs),)
$(error input not found: $(missing_inputs). DICOM names the folders of slices and LABELS the \
    labels CSV$(if $(RSNA), (the rsna2019 config finds them under RSNA=$(RSNA))))
endif
endif
endif

# dcm2jpg exits 4 when some files were skipped as failures (listed with their reason in
# meta.h5); the rest of the pipeline goes on with the slices that converted. --only-inputs:
# meta.h5 lists the slices of $(DICOM) alone, not those of an earlier input (a regenerated
# phantom, another DICOM folder) whose images are still in the folder. Any other
# failure ends the recipe with dcm2jpg's own exit code (lsf/status reports it).
$(META): $(META_INPUTS) $(DCM2JPG_SETTINGS)
	@mkdir -p $(JPEG_DIR)
	$(BIN)/dcm2jpg -j $(THREADS) $(DCM2JPG_OPTIONS) --only-inputs -o $(JPEG_DIR) $(DICOM) || \
	    { rc=$$?; [ $$rc -eq 4 ] || exit $$rc; }

$(FOLDS_H5): $(META) $(LABELS) $(MKFOLDS_SETTINGS)
	$(BIN)/mkfolds $(MKFOLDS_ARGS) -o $@ $(LABELS) $(META)

$(SEQUENCES): $(META)
	$(BIN)/seqbuild -o $@ $(META)

ifneq ($(CNN_INIT),)
$(CNN_INIT):
	@echo "$@: no such file. Import the WSL weights with pth2h5 (README, 'Pretrained" \
	    "weights'), or set CNN_INIT to another checkpoint, or CNN_INIT= for random" \
	    "initialisation." >&2
	@exit 1
endif

# Paths of the per-fold outputs.
cnn_dir = $(OUT)/cnn/f$(1)
cnn_ckpts = $(foreach e,$(CNN_EPOCH_LIST),$(OUT)/cnn/f$(1)/epoch$(e).h5)
emb_file = $(OUT)/emb/f$(1)/e$(2)/$(3).h5
lstm_dir = $(OUT)/lstm/f$(1)/e$(2)
lstm_outs = $(OUT)/lstm/f$(1)/e$(2)/val.h5 $(OUT)/lstm/f$(1)/e$(2)/test.h5

# A classifier run that fails or is killed (Ctrl-C, OOM, bkill) keeps the epochs it finished,
# each written whole and renamed into place: .DELETE_ON_ERROR would remove them all, and the
# rerun, resuming from its newest step checkpoint, would never make them again. The other
# grouped targets are quick to make again from files that are not targets and stay: the
# phantom (its folder renamed whole), lstmtrain's bags (its per-epoch checkpoints and
# predictions) and bagavg's outputs.
.PRECIOUS: $(foreach f,$(FOLDS_TRAINED),$(call cnn_ckpts,$(f)))

# One classifier per fold: every epoch's checkpoint comes from one run (a grouped target).
define cnn_rule
$(call cnn_ckpts,$(1)) &: $(META) $(FOLDS_H5) $(CNN_SETTINGS) $(CNN_INIT)
	$$(call clear_if_stale,$(call cnn_dir,$(1)),$$^)
	@mkdir -p $(call cnn_dir,$(1))
	$(LAUNCH_cnntrain) $(BIN)/cnntrain -j $(THREADS) $(DEVICE_OPTION) $(CNN_OPTIONS) \
	    --fold $(1) --resume -o $(call cnn_dir,$(1)) $(JPEG_DIR) $(FOLDS_H5)
endef

# Embeddings of one split with the classifier of one fold and epoch.
define emb_rule
$(call emb_file,$(1),$(2),$(3)): $(OUT)/cnn/f$(1)/epoch$(2).h5 $(META) $(FOLDS_H5) \
    $(EMB_SETTINGS)
	@mkdir -p $$(dir $$@)
	$(LAUNCH_embdump) $(BIN)/embdump -j $(THREADS) $(DEVICE_OPTION) $(EMB_OPTIONS) \
	    --split $(3) --fold $(1) -o $$@ $(OUT)/cnn/f$(1)/epoch$(2).h5 $(JPEG_DIR) $(FOLDS_H5)
endef

# The sequence model on one (fold, epoch)'s embeddings: bagged validation and test predictions.
define lstm_rule
$(call lstm_outs,$(1),$(2)) &: $(foreach s,$(SPLITS),$(call emb_file,$(1),$(2),$(s))) \
    $(SEQUENCES) $(FOLDS_H5) $(LSTM_SETTINGS) $(LSTM_LENGTH_SETTINGS)
	$$(call clear_if_stale,$(call lstm_dir,$(1),$(2)),$$(filter-out $(LSTM_LENGTH_SETTINGS),$$^))
	@mkdir -p $(call lstm_dir,$(1),$(2))
	$(LAUNCH_lstmtrain) $(BIN)/lstmtrain -j $(THREADS) $(DEVICE_OPTION) $(LSTM_OPTIONS) \
	    --fold $(1) --resume -o $(call lstm_dir,$(1),$(2)) $(SEQUENCES) $(FOLDS_H5) \
	    $(foreach s,$(SPLITS),$(call emb_file,$(1),$(2),$(s)))
endef

# A fold's validation score: its runs' bagged validation predictions averaged, scored.
define valscore_rule
$(OUT)/validation/f$(1).csv $(OUT)/validation/f$(1).scores &: \
    $(foreach e,$(CNN_EPOCH_LIST),$(OUT)/lstm/f$(1)/e$(e)/val.h5) $(LABELS) $(BAG_SETTINGS)
	@mkdir -p $(OUT)/validation
	$(BIN)/bagavg --clip $(CLIP) --labels $(LABELS) --baseline $(FOLDS_H5) --baseline-holdout $(1) \
	    --scores $(OUT)/validation/f$(1).scores -o $(OUT)/validation/f$(1).csv \
	    $(foreach e,$(CNN_EPOCH_LIST),$(OUT)/lstm/f$(1)/e$(e)/val.h5)
endef

$(foreach f,$(FOLDS_TRAINED),$(eval $(call cnn_rule,$(f))))
$(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),$(foreach s,$(SPLITS),\
    $(eval $(call emb_rule,$(f),$(e),$(s))))))
$(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),$(eval $(call lstm_rule,$(f),$(e)))))
$(foreach f,$(FOLDS_TRAINED),$(eval $(call valscore_rule,$(f))))

ALL_TEST_PREDICTIONS = $(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),\
    $(OUT)/lstm/f$(f)/e$(e)/test.h5))
SCORE_OPTIONS = $(if $(TEST_LABELS),--labels $(TEST_LABELS) --baseline $(FOLDS_H5) \
    --scores $(OUT)/submission.scores)

# Every run's bagged test predictions averaged (reference-method.md stage 6).
$(SUBMISSION) $(OUT)/predictions.h5 &: $(ALL_TEST_PREDICTIONS) $(BAG_SETTINGS) $(TEST_LABELS)
	$(BIN)/bagavg --clip $(CLIP) $(SCORE_OPTIONS) --h5-out $(OUT)/predictions.h5 -o $@ \
	    $(ALL_TEST_PREDICTIONS)

# The DAG as text, one node a line: NODE <tab> STAGE <tab> TARGETS <tab> DEPENDENCIES (nodes).
# A node's job is `make -f pipeline/pipeline.mk [the same variables] TARGETS`.
node = printf '%s\t%s\t%s\t%s\n' '$(1)' '$(2)' '$(strip $(3))' '$(strip $(4))';
PHANTOM_NODE = $(if $(filter 1,$(PHANTOM)),mkphantom)
dag:
	@$(if $(PHANTOM_NODE),$(call node,mkphantom,mkphantom,$(LABELS)))
	@$(call node,dcm2jpg,dcm2jpg,$(META),$(PHANTOM_NODE))
	@$(call node,mkfolds,mkfolds,$(FOLDS_H5),dcm2jpg $(PHANTOM_NODE))
	@$(call node,seqbuild,seqbuild,$(SEQUENCES),dcm2jpg)
	@$(foreach f,$(FOLDS_TRAINED),$(call node,cnntrain-f$(f),cnntrain,\
	    $(call cnn_ckpts,$(f)),dcm2jpg mkfolds))
	@$(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),$(foreach s,$(SPLITS),\
	    $(call node,embdump-f$(f)-e$(e)-$(s),embdump,$(call emb_file,$(f),$(e),$(s)),\
	    cnntrain-f$(f) dcm2jpg mkfolds))))
	@$(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),\
	    $(call node,lstmtrain-f$(f)-e$(e),lstmtrain,$(call lstm_outs,$(f),$(e)),\
	    $(foreach s,$(SPLITS),embdump-f$(f)-e$(e)-$(s)) seqbuild mkfolds)))
	@$(foreach f,$(FOLDS_TRAINED),$(call node,validation-f$(f),bagavg,\
	    $(OUT)/validation/f$(f).csv $(OUT)/validation/f$(f).scores,\
	    $(foreach e,$(CNN_EPOCH_LIST),lstmtrain-f$(f)-e$(e)) mkfolds))
	@$(call node,bagavg,bagavg,$(SUBMISSION) $(OUT)/predictions.h5,\
	    $(foreach f,$(FOLDS_TRAINED),$(foreach e,$(CNN_EPOCH_LIST),lstmtrain-f$(f)-e$(e))) \
	    mkfolds $(PHANTOM_NODE))
