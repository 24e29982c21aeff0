#!/bin/bash
# 1 process x 2 threads against 2 concurrent processes x 1 thread: training-step throughput, interleaved rounds
cd "$(dirname "$0")/../../.."  # the repository root
B=".venv/bin/python -m scripts.bench train methods=lora,iapt,parade tasks=sst2 dtypes=float32 rounds=2 warmup=1 steps=4 loop=false figures=/tmp/thr/fig"
one() { $B threads=2 out=/tmp/thr/A$1 > /tmp/thr/A$1.log 2>&1; }
two() { $B threads=1 out=/tmp/thr/B$1a > /tmp/thr/B$1a.log 2>&1 & $B threads=1 out=/tmp/thr/B$1b > /tmp/thr/B$1b.log 2>&1 & wait; }
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then one $r; two $r; else two $r; one $r; fi
  echo "round $r done $(date +%T)"
done
