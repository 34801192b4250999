# `make test` and `make demo` set everything up on a fresh machine (Python 3.11 + pip).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: install test lint demo clean

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a different multi-GB build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[train,onnxruntime,openvino,dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

test: install lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q

# the street-scene demo: DEMO_ARGS="path/to/clip.mp4 --target onnxruntime" to change source or target
demo: install
	$(VENV)/bin/m2f info
	$(VENV)/bin/m2f demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
