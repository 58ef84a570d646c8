# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Python: 3.11 (this machine's default and CI's) - 3.13; pip picks the newest JAX each supports (0.9 on 3.11,
# 0.12 on 3.12+: both are tested).  Override with
# `make PYTHON=python3.12 ...` if you want it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean gpu-wheels

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

# cp312 manylinux wheels of what an offline GPU box (Python 3.12, its own JAX, flax, optax, orbax,
# onnx, onnxruntime) lacks, at the versions this project is tested with: `.whl/` travels with a
# device call (experiments/gpu_session.sh installs them there with --no-deps).
GPU_WHEELS := mujoco==4.0.1 mujoco-core==4.0.1 mujoco-studio==4.0.1 mujoco-mjx==3.17.0 \
	playground==0.2.0 brax==0.14.2 jaxopt==0.8.5 tyro==1.0.17 ml_collections==1.1.0 mediapy==1.2.7 \
	tensorboardX==2.6.5 trimesh==5.2.0 glfw==2.11.0 PyOpenGL==3.1.10 docstring_parser==0.18.0 \
	typeguard==4.6.1 etils==1.15.0 tqdm==4.70.1 lxml==6.2.1

gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --dest .whl --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		$(GPU_WHEELS)
	@du -sh .whl

clean:
	rm -rf $(VENV) runs
