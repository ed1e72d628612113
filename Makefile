# The README's two commands: `make demo` and `make test`. Both install first (bin/install is idempotent).
PY := .venv/bin/python
HVDAT := .venv/bin/hvdat
DEMO_OUT := runs/demo
# PGD-AT on the embedded digits data, then standard AutoAttack on 50 test digits: a few minutes on 2 cores.
DEMO_TRAIN := --np 2 --dataset digits --arch small-cnn --attack pgd --eps 0.1 --steps 5 --epochs 6 \
              --batch-size 32 --lr 0.4 --eval-samples 360

.PHONY: install demo test bench image-test
install:
	bin/install

demo: install
	$(HVDAT) train $(DEMO_TRAIN) --out $(DEMO_OUT) --overwrite
	$(HVDAT) eval $(DEMO_OUT) --attack autoattack --eps 0.1 --n-examples 50 --np 2
	$(HVDAT) report $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

# The CPU image built from docker/Dockerfile and run (one container, then two as two hosts): not in `make test`.
# Needs root; installs docker.io and debootstrap and starts dockerd when none runs. A cold run took 18 minutes on
# 2 shared cores (its Horovod compile 11; 46 minutes of build under heavier load); Horovod's layer depends only on
# bin/install, so a rerun after an edit under hvdat/ or to setup.py reuses it (48 s measured; docker/README.md).
image-test:
	HVDAT_DOCKER=1 bin/install
	$(PY) -m pytest -q -m image tests/test_docker_image.py --durations=10 -s

# Every table of docs/RESULTS.md, in order (about 1.5 h on 2 cores; each writes docs/results/NAME.json and .png).
bench: install
	$(PY) experiments/train_step.py
	$(PY) experiments/scaling.py
	$(PY) experiments/compression.py --bandwidth 1gbit
	$(PY) experiments/methods.py
	$(PY) experiments/co_guard.py --train-samples 2000 --epochs 6 --eps 16/255 --n-eval 500
	$(PY) experiments/co_guard.py --dataset digits --eps 0.15 --lr 0.1 --epochs 15 --batch-size 64 --n-eval 360 \
	    --out docs/results/co-digits
	$(PY) experiments/unlabeled.py
	$(PY) experiments/slow_link.py
