# `make test` and `make demo` set everything up on a fresh machine (Python 3.11 + pip).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: install test lint demo clean gpu-check rtsp-server

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a different multi-GB build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[train,onnxruntime,openvino,dev,fleet]"
	# the fused deformable-attention CPU op (the packaged int8 files that carry it need it; without it the
	# standard-op files run and m2f info says why)
	$(VENV)/bin/m2f build-plugins || echo "the OpenVINO MSDA extension did not build: the standard-op files run"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

# The RTSP server of tests/sdk/test_network_streams.py: GStreamer's (tests/sdk/rtsp_server.py), run by Debian's
# python3. Its packages are installed when it cannot run and this is root with apt-get; elsewhere, or when the
# install fails (no reachable mirror), the run goes on and those tests skip saying what is missing (this target
# prints why). A machine without a package mirror must not fail the whole suite over one server.
RTSP_PACKAGES := python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
RTSP_CHECK := /usr/bin/python3 tests/sdk/rtsp_server.py --check
rtsp-server:
	@if $(RTSP_CHECK) 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the RTSP test server's packages: $(RTSP_PACKAGES)"; \
		{ timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
			--no-install-recommends $(RTSP_PACKAGES) >/dev/null && $(RTSP_CHECK); } \
		|| echo "could not install the RTSP test server's packages: the RTSP tests skip"; \
	else \
		echo "no RTSP test server (not root with apt-get to install $(RTSP_PACKAGES)): the RTSP tests skip"; \
	fi

# --max-worker-restart=0: a worker that dies ends the run naming its test (a restarted worker under
# --dist loadfile can leave xdist waiting forever: pytest-dev/pytest-xdist#784, #1378)
test: install lint rtsp-server
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart=0 -q

# the street-scene demo: DEMO_ARGS="path/to/clip.mp4 --target onnxruntime" to change source or target
demo: install
	$(VENV)/bin/m2f info
	$(VENV)/bin/m2f demo $(DEMO_ARGS)

# The GPU machine's own check (tools/gpu_check.py): the machine's python, no venv, no internet; <= 6 minutes on
# an H200. GPU_CHECK_OUT receives gpu_check.md/.json and pytest_gpu.log (docs/gpu-jetson.md).
GPU_PY ?= python3
GPU_CHECK_OUT ?= benchmarks/results/gpu_check
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 $(GPU_PY) -m tools.gpu_check --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
