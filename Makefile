# detkit: `make demo` runs the main job on the embedded default data; `make test` runs the whole suite.
# Both create a virtual environment in .venv unless one is already active.

SHELL := /bin/bash
VENV ?= .venv
ifdef VIRTUAL_ENV
PYTHON := python
STAMP := $(VIRTUAL_ENV)/.detkit-installed
else
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.detkit-installed
endif

.PHONY: install test demo demo-classify bench clean

$(VENV)/bin/python:
	@if [ -z "$$VIRTUAL_ENV" ]; then python3 -m venv $(VENV); fi

$(STAMP): setup.cfg setup.py pyproject.toml | $(VENV)/bin/python
	$(PYTHON) -m pip install -q --upgrade pip setuptools wheel
	$(PYTHON) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	@set +e; $(PYTHON) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing"; exit 1; fi; exit $$rc

# train.amp (bfloat16 autocast) only where the CPU computes bfloat16 natively (AMX or AVX512-BF16: faster there, 2-15x
# slower elsewhere). The demo's wall time (install excluded) is printed at the end; docs/benchmarks.md, "Detection demo".
demo: $(STAMP)
	@mkdir -p runs && date +%s > runs/.demo-start
	$(PYTHON) tools/make_dataset.py shapes --task detect --out data/shapes_det --n-train 2000 --n-val 200 --seed 0
	amp=$$(grep -qsE 'amx_bf16|avx512_bf16' /proc/cpuinfo && echo true || echo false); \
	$(PYTHON) tools/finetune.py --config configs/shapes_det_resnet18_ssd.yaml --exist-ok train.amp=$$amp
	$(PYTHON) tools/detect.py --checkpoint runs/shapes_det_resnet18_ssd/best.pt --source data/shapes_det/val \
		--output runs/shapes_det_resnet18_ssd/detect
	@echo "make demo: annotated val images and predictions.json are in runs/shapes_det_resnet18_ssd/detect"
	@echo "make demo: $$(( $$(date +%s) - $$(cat runs/.demo-start) )) s end to end (install excluded)"; rm -f runs/.demo-start

demo-classify: $(STAMP)
	$(PYTHON) tools/make_dataset.py shapes --task classify --out data/shapes --n-train 2000 --n-val 400 --size 128 --seed 0
	$(PYTHON) tools/finetune.py --config configs/shapes_cls_resnet18.yaml --exist-ok

bench: $(STAMP)
	$(PYTHON) tools/bench.py ops

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info
