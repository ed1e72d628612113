#!/usr/bin/env bash
# Builds .gpudata/ (git-excluded; carried to the device): the CIFAR-10 JPEG tree as a .tgz, pyautoattack's
# package (the PyPI wheel's python files without its 43 MB examples/ folder), and src.tar: HEAD's hvdat/ and
# experiments/ (git archive, so other people's uncommitted edits in the working tree don't travel), with this
# working tree's experiments/gpu/ laid over it. Prints what will travel. From the repo root.
set -eu
CIFAR=${CIFAR:-../shared/data/cifar10-jpg}
D=.gpudata
grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo '/.gpudata/' >>.git/info/exclude
mkdir -p "$D"
if [ ! -f "$D/cifar10-jpg.tgz" ]; then
    tar -C "$(dirname "$CIFAR")" -czf "$D/cifar10-jpg.tgz" "$(basename "$CIFAR")"
fi
if [ ! -d "$D/site/pyautoattack" ]; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$tmp" pyautoattack==0.2.0
    mkdir -p "$D/site" && unzip -q "$tmp"/pyautoattack-0.2.0-py3-none-any.whl -x 'pyautoattack/examples/*' -d "$D/site"
    rm -rf "$tmp"
fi
rm -rf "$D/src" && mkdir -p "$D/src"
git archive HEAD hvdat experiments | tar -x -C "$D/src"
rm -rf "$D/src/experiments/gpu" && cp -r experiments/gpu "$D/src/experiments/gpu"
find "$D/src" -name __pycache__ -prune -exec rm -rf {} +
if git diff --quiet HEAD -- experiments/gpu && [ -z "$(git ls-files --others --exclude-standard experiments/gpu)" ]; then
    echo "$(git rev-parse --short HEAD)" >"$D/src/COMMIT"
else
    echo "$(git rev-parse --short HEAD) + uncommitted experiments/gpu" >"$D/src/COMMIT"
fi
tar -cf "$D/src.tar" -C "$D/src" . && rm -rf "$D/src"
du -sh "$D"/*
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carried=$(du -sb "$D" | cut -f1)
echo "travels: tracked $((tracked / 1024)) KiB + untracked $((untracked / 1024)) KiB + carried .gpudata $((carried / 1024)) KiB" \
    "= $(((tracked + untracked + carried) / 1048576)) MiB (limit 64)"
