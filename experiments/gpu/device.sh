#!/usr/bin/env bash
# The device call's whole script (see experiments/gpu/README.md). From the repo root:
#     experiments/gpu/device.sh device   # on the GPU machine: OUT is set by the device tool
#     experiments/gpu/device.sh local    # tiny settings on this CPU machine (GPU_PYTHON: an interpreter with
#                                        # no horovodrun beside it, so the shim's horovodrun is the one found)
# Needs .gpudata/ (git-excluded, carried): cifar10-jpg.tgz, site/pyautoattack/, and src.tar (git archive of the
# tested commit's hvdat/ and experiments/: the code that runs, whatever else the working tree holds).
set -u
PROFILE=${1:-device}
BUDGET=${2:-520}
EXTRA=${GPU_EXTRA:-}
OUT=${OUT:-/tmp/gpu-out}
WORK=${GPU_WORK:-/tmp/gpuwork}
PY=${GPU_PYTHON:-python3}
DATA=$PWD/.gpudata
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK/src"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "== $(date -u) profile $PROFILE budget ${BUDGET}s on $(hostname), $(nproc) cores"
tar -xf "$DATA/src.tar" -C "$WORK/src" || { echo "no $DATA/src.tar"; exit 2; }
tar -xzf "$DATA/cifar10-jpg.tgz" -C "$WORK" || { echo "no $DATA/cifar10-jpg.tgz"; exit 2; }
echo "== code: $(cat "$WORK/src/COMMIT" 2>/dev/null); data: $(find "$WORK/cifar10-jpg" -name '*.jpg' | wc -l) images"
# the single-process Horovod shim and horovodrun first, then the tested code, then the carried pyautoattack
export PATH="$WORK/src/experiments/gpu/shim/bin:$PATH"
export PYTHONPATH="$WORK/src/experiments/gpu/shim:$WORK/src:$DATA/site${PYTHONPATH:+:$PYTHONPATH}"
export HVDAT_CACHE="$WORK/cache" PYTHONUNBUFFERED=1
cd "$WORK/src" || exit 2
# hvdat's CLI on the machine's own typer/rich/click; if that fails, the tested versions carried as wheels
if ! "$PY" -m hvdat train --help >/dev/null 2>"$WORK/cli-check.err"; then
    echo "== hvdat's CLI fails on this machine's packages: $(tail -n 1 "$WORK/cli-check.err"); using .gpudata/cli-whl"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/cli-site" \
        "$DATA"/cli-whl/*.whl || exit 2
    export PYTHONPATH="$WORK/src/experiments/gpu/shim:$WORK/cli-site:$WORK/src:$DATA/site${PYTHONPATH#*$DATA/site}"
    "$PY" -m hvdat train --help >/dev/null || exit 2
fi
"$PY" -c "from importlib.metadata import version as v; import typer; print('== typer', v('typer'), 'click', v('click'), 'rich', v('rich'), typer.__file__)"
"$PY" experiments/gpu/device_run.py --profile "$PROFILE" --budget "$BUDGET" \
    --data-dir "$WORK/cifar10-jpg" --work "$WORK/w" --out "$OUT" $EXTRA
rc=$?
echo "== $(date -u) device_run exit $rc"
exit $rc
