#!/usr/bin/env bash
# Everything that needs a GPU, in one command (a lent GPU machine is billed by the minute):
#   bash benchmarks/gpu_run.sh [STAGE...]
# stages: env tune hostprof oracle bench tests suite (default: env oracle bench tests)
# Results go to $OUT (default benchmarks/results/gpu): logs, bench CSV/JSON.
# Needs torch with CUDA, triton, pytest, hypothesis (pytest-xdist if present) on the machine.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
STAGES=${*:-env oracle bench tests}
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 14")
BENCH_ARGS=${BENCH_ARGS:---shapes 64x128x56x56,256x64x112x112 --dtypes float32,bfloat16 --no-compile --min-run-time 0.5}
status=0

for stage in $STAGES; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    env)
      { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
        $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
      } 2>&1 | tee "$OUT/env.txt" ;;
    tune)
      $PY benchmarks/gpu_tune.py --out "$OUT" > "$OUT/tune.txt" 2>&1 || status=1
      grep -v "^ \|^$" "$OUT/tune.txt" | tail -40 ;;
    hostprof)  # the host-side profile alone
      $PY benchmarks/gpu_tune.py --no-sweep --out "$OUT" > "$OUT/tune.txt" 2>&1 || status=1
      grep "^host" "$OUT/tune.txt" ;;
    oracle)  # one process per padding: compiling the kernel variants is the slow part
      pids=""
      for padding in zeros border periodic reflect symmetric; do
        $PY benchmarks/oracle_check.py --backend triton --device cuda --large --trials 2 \
          --paddings $padding > "$OUT/oracle-$padding.log" 2>&1 & pids="$pids $!"
      done
      for pid in $pids; do wait $pid || status=1; done
      cat "$OUT"/oracle-*.log | grep -v Warn > "$OUT/oracle.txt"; rm -f "$OUT"/oracle-*.log
      grep -v "^ " "$OUT/oracle.txt" | tail -8 ;;
    bench)
      $PY -m torchshift2.bench --device cuda --out "$OUT" --name bench-cuda $BENCH_ARGS \
        2>&1 | tee "$OUT/bench-table.txt" || status=1 ;;
    tests)  # the property tests of tests/triton on CUDA tensors, and tests/test_cuda.py
      TORCHSHIFT2_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider $XDIST tests/triton \
        tests/test_cuda.py > "$OUT/tests-cuda.txt" 2>&1 || status=1
      tail -15 "$OUT/tests-cuda.txt" ;;
    suite)  # the whole CPU suite on this machine too (its own C++ build)
      $PY -m pytest -q -p no:cacheprovider $XDIST tests > "$OUT/tests-suite.txt" 2>&1 || status=1
      tail -15 "$OUT/tests-suite.txt" ;;
    *) echo "unknown stage $stage"; status=2 ;;
  esac
done
echo "=== done ($(date +%T)), status $status"
exit $status
