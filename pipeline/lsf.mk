# Cluster resources of the pipeline's jobs, read by lsf/submit (lsf/README.md). Included by
# pipeline.mk after the config, so a config or the command line overrides every default here:
#   lsf/submit pipeline/configs/rsna2019.mk LSF_QUEUE=gpu LSF_cnntrain_WALL=72:00
#
# Per stage (mkphantom dcm2jpg mkfolds seqbuild cnntrain embdump lstmtrain bagavg):
#   LSF_<stage>_GPUS   GPUs per host (bsub -gpu "num=N:mode=exclusive_process"); 0: none
#   LSF_<stage>_SLOTS  tasks (bsub -n); above 1 in an MPI stage, the program is started as
#                      $(LSF_MPIRUN) -np SLOTS (lsf/submit sets LAUNCH_<stage> on the job's
#                      make command line)
#   LSF_<stage>_PTILE  tasks per host (bsub -R "span[ptile=N]"); empty: LSF decides
#   LSF_<stage>_MEM    memory limit (bsub -M), e.g. 16GB; empty: none
#   LSF_<stage>_WALL   run limit [hours:]minutes (bsub -W); empty: the queue's
#   LSF_<stage>_QUEUE  queue (bsub -q); defaults to LSF_QUEUE
#   LSF_<stage>_EXTRA  more bsub options for that stage only

# lsf/submit also names this file with -f, which must not define everything twice.
ifndef LSF_MK_INCLUDED
LSF_MK_INCLUDED = 1

# Empty: the cluster's default queue / project.
LSF_QUEUE ?=
LSF_PROJECT ?=
# Job names are PREFIX-sN-NODE (N: the submission number, so names never collide with an
# earlier submission's); the default prefix tells apart the runs of different OUT folders.
LSF_JOB_PREFIX ?= ich$(shell printf '%s' '$(abspath $(OUT))' | cksum | cut -c1-5)
# Job logs (sN/NODE.JOBID.out and .err) and the record of submitted jobs (jobs.tsv).
LSF_LOG_DIR ?= $(OUT)/lsf
# A container image for every job: passed as LSB_CONTAINER_IMAGE (bsub -env) to the
# application profile LSF_APP, whose CONTAINER setting must use $LSB_CONTAINER_IMAGE.
LSF_IMAGE ?=
LSF_APP ?=
# More bsub options for every job, passed through word by word.
LSF_EXTRA ?=
LSF_MPIRUN ?= mpirun
# Stages whose programs run under MPI when given more than one slot (the distributed issue).
LSF_MPI_STAGES ?= cnntrain embdump lstmtrain
# Stages whose alike nodes are submitted as one job array (lsf/README.md says which).
LSF_ARRAY_STAGES ?= embdump lstmtrain

LSF_STAGES = mkphantom dcm2jpg mkfolds seqbuild cnntrain embdump lstmtrain bagavg
LSF_STAGE_FIELDS = GPUS SLOTS PTILE MEM WALL QUEUE EXTRA

# CPU stages: one task each (the programs' own threads use THREADS, which should fit the slots).
LSF_mkphantom_SLOTS ?= 1
LSF_mkphantom_WALL ?= 1:00
LSF_dcm2jpg_SLOTS ?= 1
LSF_dcm2jpg_MEM ?= 8GB
LSF_dcm2jpg_WALL ?= 8:00
LSF_mkfolds_WALL ?= 0:30
LSF_seqbuild_WALL ?= 0:30
LSF_bagavg_WALL ?= 1:00

# GPU stages: one GPU by default; rsna2019.mk asks for the original's four on one host.
LSF_cnntrain_GPUS ?= 1
LSF_cnntrain_SLOTS ?= 1
LSF_cnntrain_MEM ?= 64GB
LSF_cnntrain_WALL ?= 72:00
LSF_embdump_GPUS ?= 1
LSF_embdump_SLOTS ?= 1
LSF_embdump_MEM ?= 32GB
LSF_embdump_WALL ?= 24:00
LSF_lstmtrain_GPUS ?= 1
LSF_lstmtrain_SLOTS ?= 1
LSF_lstmtrain_MEM ?= 32GB
LSF_lstmtrain_WALL ?= 8:00

# Unset fields: no GPU, one slot, no limit, the common queue.
$(foreach s,$(LSF_STAGES),$(eval LSF_$(s)_GPUS ?= 0)$(eval LSF_$(s)_SLOTS ?= 1)\
    $(eval LSF_$(s)_QUEUE ?= $$(LSF_QUEUE)))

LSF_VARIABLES = LSF_QUEUE LSF_PROJECT LSF_JOB_PREFIX LSF_LOG_DIR LSF_IMAGE LSF_APP LSF_EXTRA \
    LSF_MPIRUN LSF_MPI_STAGES LSF_ARRAY_STAGES LSF_STAGES \
    $(foreach s,$(LSF_STAGES),$(foreach f,$(LSF_STAGE_FIELDS),LSF_$(s)_$(f)))

# NAME=value lines, one per variable above ($(info) prints values without a shell in between).
# Included before the pipeline's own rules: this one must not become make's default goal.
LSF_GOAL_BEFORE := $(.DEFAULT_GOAL)
.PHONY: lsf-resources
lsf-resources:
	@$(foreach v,$(LSF_VARIABLES),$(info $(v)=$(strip $($(v)))))
.DEFAULT_GOAL := $(LSF_GOAL_BEFORE)

endif
