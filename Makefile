# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Python: 3.11 (this machine's default and CI's) - 3.13; pip picks the newest JAX each supports (0.9 on 3.11,
# 0.12 on 3.12+: both are tested).  Override with
# `make PYTHON=python3.12 ...` if you want it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14), "need Python 3.11 - 3.13, got " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,export]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m jaxrl.demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 --nbmake --nbmake-timeout=600 tests notebooks

clean:
	rm -rf $(VENV) runs
