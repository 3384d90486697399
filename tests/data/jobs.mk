# Extra targets for the submission-layer tests: `make -f Makefile -f tests/data/jobs.mk ...`.
# They go through the same $(SUBMIT) as every pipeline target.
TEMPLATE ?=
ARRAY ?=
JOB_VARS ?=

.PHONY: test-job
test-job: $(VENV_STAMP)
	$(SUBMIT) --template $(call q,$(TEMPLATE)) --name test-job $(if $(ARRAY),--array $(call q,$(ARRAY))) \
		$(foreach v,$(JOB_VARS),--var $(call q,$(v)))
