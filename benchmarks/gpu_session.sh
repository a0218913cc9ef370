#!/usr/bin/env bash
# The one prepared command for a session that is lent a GPU machine (issue 5).
# It runs in the repository root there (Python 3.12 + torch, no MXNet, no network) and
# writes its results into $OUT (default benchmarks/results); expected 3-5 minutes on an H200:
#
#   bash benchmarks/gpu_session.sh            # through the device tool: run(command=...)
#
# 1. GPU, the chapter's settings on synthetic hotdog-shaped JPEGs (2000/800, 224 px,
#    5 epochs, batch 128): the book's loader (0 workers) vs the fast pipeline with the
#    training images decoded on the GPU (nvJPEG) and with PIL, frozen features, and the
#    compute-only ceiling.
# 2. The host's CPU (bf16 units there), torch on 2 threads as on a laptop: book vs fast
#    in fp32 and in bf16, and the compute-only ceilings, 112 px, 2 epochs of 512/128.
set -u
PY=${PY:-$(command -v /opt/torch/.venv/bin/python || command -v python3)}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
"$PY" benchmarks/bench_train.py --device cuda --out "$OUT" --work-dir /tmp \
    --variants book,fast,fast-pildecode,fast-freeze,ceiling --book-workers 0 \
    --tag gpu-decode 2>&1 | tail -n 25
OMP_NUM_THREADS=2 "$PY" benchmarks/bench_train.py --device cpu --out "$OUT" --work-dir /tmp \
    --train 512 --test 128 --image-size 112 --epochs 2 \
    --variants book-shipped,book,fast-fp32,fast,ceiling-fp32,ceiling --tag host-cpu-2threads 2>&1 | tail -n 15
