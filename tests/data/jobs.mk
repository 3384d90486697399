# Extra targets for the submission-layer tests: `make -f Makefile -f tests/data/jobs.mk ...`.
# They go through the same $(SUBMIT) as every pipeline target.
TEMPLATE ?=
ARRAY ?=
JOB_VARS ?=

.PHONY: test-job
test-job: $(VENV_STAMP)
	$(SUBMIT) --template $(TEMPLATE) --name test-job $(if $(ARRAY),--array $(ARRAY)) \
		$(foreach v,$(JOB_VARS),--var $(v))
