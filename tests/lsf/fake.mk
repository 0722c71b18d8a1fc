# A small DAG in pipeline.mk's shape for the tests of lsf/: every node writes its targets with
# `touch` after a check that its inputs exist, so that job order errors show; FAIL=NODE makes
# that node's recipe fail. Same `dag` output format and lsf.mk resources as pipeline.mk.
#   make -f tests/lsf/fake.mk CONFIG=... OUT=DIR [FAIL=NODE] [target]
ifdef CONFIG
include $(CONFIG)
endif
OUT ?= fake-out
FAIL ?=
EPOCHS = 1 2
SPLITS = train val test
include pipeline/lsf.mk

# $(call step,NODE,TARGETS,INPUTS)
define step
$(2) &: $(3)
	@for f in $$^; do [ -e "$$$$f" ] || { echo "$(1): input $$$$f missing" >&2; exit 1; }; done
	@[ "$(FAIL)" != "$(1)" ] || { echo "$(1): failing as asked" >&2; exit 3; }
	@mkdir -p $$(sort $$(dir $(2)))
	@echo "$(1): making $(2) ($$$${LAUNCH:-no launcher})"
	@touch $(2)
endef

$(eval $(call step,prepare,$(OUT)/meta.h5,))
$(eval $(call step,cnntrain-f0,$(foreach e,$(EPOCHS),$(OUT)/cnn/epoch$(e).h5),$(OUT)/meta.h5))
$(foreach e,$(EPOCHS),$(foreach s,$(SPLITS),$(eval $(call step,embdump-f0-e$(e)-$(s),\
    $(OUT)/emb/e$(e)/$(s).h5,$(OUT)/cnn/epoch$(e).h5))))
$(foreach e,$(EPOCHS),$(eval $(call step,lstmtrain-f0-e$(e),$(OUT)/lstm/e$(e).h5,\
    $(foreach s,$(SPLITS),$(OUT)/emb/e$(e)/$(s).h5))))
$(eval $(call step,bagavg,$(OUT)/submission.csv,$(foreach e,$(EPOCHS),$(OUT)/lstm/e$(e).h5)))

node = printf '%s\t%s\t%s\t%s\n' '$(1)' '$(2)' '$(strip $(3))' '$(strip $(4))';
.PHONY: dag
dag:
	@$(call node,prepare,dcm2jpg,$(OUT)/meta.h5,)
	@$(call node,cnntrain-f0,cnntrain,$(foreach e,$(EPOCHS),$(OUT)/cnn/epoch$(e).h5),prepare)
	@$(foreach e,$(EPOCHS),$(foreach s,$(SPLITS),$(call node,embdump-f0-e$(e)-$(s),embdump,\
	    $(OUT)/emb/e$(e)/$(s).h5,cnntrain-f0)))
	@$(foreach e,$(EPOCHS),$(call node,lstmtrain-f0-e$(e),lstmtrain,$(OUT)/lstm/e$(e).h5,\
	    $(foreach s,$(SPLITS),embdump-f0-e$(e)-$(s))))
	@$(call node,bagavg,bagavg,$(OUT)/submission.csv,$(foreach e,$(EPOCHS),lstmtrain-f0-e$(e)))
