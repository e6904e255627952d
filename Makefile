# DistilDP Lab. The two commands of the README: `make run` (the quick benchmark grid on the embedded
# default) and `make test` (the default test suite). Both create .venv and install what they need first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
GRID ?= quick
# the profile the grid file names (its pretrained models are built and printed before the grid starts)
GRID_FILE = $(if $(filter %.yaml,$(GRID)),$(GRID),benchmarks/grids/$(GRID).yaml)
PROFILE ?= $(shell sed -n 's/^profile: *\([a-z]*\).*/\1/p' $(GRID_FILE) 2>/dev/null)
# where the runner writes the grid's tables (the quick grid's are the committed ones)
GRID_NAME = $(basename $(notdir $(GRID_FILE)))
TABLES = $(if $(filter quick,$(GRID_NAME)),results/tables,results/$(GRID_NAME)/tables)
JOBS ?= 2
# pip prints "Location ... is ignored" for every package on these machines: harmless, filtered.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: setup run test test-slow test-gpu lab strip check-notebooks clean-store bench exercises grade grade-needs-submissions book

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	$(PY) -c "import distildp, torch, opacus; print('installed distildp with torch', torch.__version__, 'opacus', opacus.__version__)"
	touch $@

# Runs the grid (its pretrained_teacher and pretrained_student points build the public models side by side,
# one core each: faster than one process on both cores), prints the pretrained models beside the exact floor
# (read from the store), then the total time.
run: setup
	@start=$$(date +%s); status=0; \
	$(PY) -m distildp.runner --grid $(GRID) --jobs $(JOBS) || status=$$?; \
	[ $$status -ne 0 ] || $(PY) -m distildp.pipeline --profile $(PROFILE) || status=$$?; \
	[ $$status -ne 0 ] || $(PY) -m distildp.reporting.results $(TABLES) || status=$$?; \
	[ $$status -ne 0 ] || $(PY) -m distildp.runner.profile --grid $(GRID_NAME) --jobs $(JOBS) || status=$$?; \
	echo "make run: $$(( $$(date +%s) - start )) s in all (pretraining included)"; exit $$status

test: setup
	$(PY) -m ruff check lib benchmarks tests
	$(PY) -m ruff format --check lib benchmarks tests
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# on a machine with a CUDA GPU (and a CUDA build of torch): the device tests, GPU side
test-gpu: setup
	$(PY) -m pytest -m gpu tests/test_devices.py

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

strip: setup
	$(PY) -m distildp.teaching.notebooks strip notebooks/*.ipynb

check-notebooks: setup
	$(PY) -m distildp.teaching.notebooks check notebooks/*.ipynb

# The tutorial as static HTML (docs/teaching.md): every notebook executed on the smoke profile with its own store in
# $(BOOK)-work (never .artifacts), exercises without their solutions, figures embedded; $(BOOK)/index.html links them.
BOOK ?= build/book
book: setup
	$(PY) -m distildp.teaching.book $(BOOK)

# speed and memory benchmarks (not tests; run them on a quiet machine): DP-SGD's clipping modes side by side
# against non-private steps, how that grows with batch, length and model size, the non-private training and
# evaluation steps against each of their speed-ups (torch.compile and vmap included), generation throughput,
# data-parallel steps on 1 and 2 processes, and the paper grid's GPU-hours from the measured step times
bench: setup
	$(PY) benchmarks/bench_dpsgd.py --preset tiny-teacher --vocab 2048 --batch 32 --seq 48 --steps 12 --rounds 5 \
		--configs hooks+conv1d ghost bookkeeping "bookkeeping one-pass"
	$(PY) benchmarks/bench_dpsgd_sweep.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_ddp.py
	$(PY) benchmarks/cost_model.py

clean-store:
	rm -rf .artifacts

# Autograded exercises (docs/teaching.md). `make exercises` runs otter assign on the exercise notebooks:
# $(EXERCISES)/student (hand these out), $(EXERCISES)/autograder (the zips `make grade` uses), $(EXERCISES)/solutions.
# `make grade SUBMISSIONS=dir` grades every notebook under dir with otter run (no Docker) into $(GRADES).
EXERCISES ?= build/exercises
EXERCISE_NOTEBOOKS := $(addprefix notebooks/,01_data_and_models.ipynb 02_dp_sgd.ipynb 04_synthetic_text.ipynb \
	05_distillation.ipynb 07_results.ipynb)
GRADES ?= $(EXERCISES)/grades.csv

grade-needs-submissions:
	@[ -n "$(SUBMISSIONS)" ] || { echo "usage: make grade SUBMISSIONS=folder-of-submitted-notebooks [GRADES=file.csv]"; exit 2; }
	@[ -d "$(SUBMISSIONS)" ] || { echo "SUBMISSIONS=$(SUBMISSIONS) is not a folder: pass the folder of submitted notebooks"; exit 2; }

exercises: setup $(EXERCISES)/.built

$(EXERCISES)/.built: $(VENV)/.installed $(EXERCISE_NOTEBOOKS) $(addprefix lib/distildp/teaching/,exercises.py dp_exercises.py \
	model_exercises.py grading.py)
	$(PY) -m distildp.teaching.grading build $(EXERCISES)
	touch $@

# the folder is checked first, before anything is built
grade: grade-needs-submissions setup $(EXERCISES)/.built
	$(PY) -m distildp.teaching.grading grade $(SUBMISSIONS) --autograders $(EXERCISES)/autograder --csv $(GRADES)
