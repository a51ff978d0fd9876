# The README's two set-up commands: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench device-wheels lint format clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --workdir runs/demo --data_dir data

# Not part of `make test`: minutes on a GPU, tens of minutes on a CPU.
bench: $(STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.run --model cmx-b2
	$(PY) -m benchmarks.models

# Wheels for the accelerator check on a machine without network (benchmarks/device_check.py):
# for its Python (DEVICE_PYTHON) on x86-64 Linux, into .whl/.
DEVICE_PYTHON ?= 3.12
device-wheels:
	rm -rf .whl && mkdir .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
	    --python-version $(DEVICE_PYTHON) --implementation cp --platform any \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
	    -r benchmarks/device_wheels.txt
	$(PYTHON) -m pip wheel --quiet --no-deps -w .whl promise==2.3
	du -sh .whl

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=10

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
