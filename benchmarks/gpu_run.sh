#!/usr/bin/env bash
# Everything that needs a GPU, in one command sized for a 10-minute lent GPU slot:
#   bash benchmarks/gpu_run.sh [STAGE...]
# stages, in this order by default: env tests oracle bench sass
#   env     GPU, driver, torch / triton versions                       (seconds)
#   tests   the kernel suite's triton-cuda case, tests/triton on CUDA   (limit 200 s, parallel)
#           tensors, tests/test_cuda.py
#   oracle  benchmarks/oracle_check.py, the Triton backend on CUDA    (limit 100 s, parallel)
#   bench   benchmarks/gpu_bench.py: device + eager wall time, floors, (limit 240 s)
#           cuDNN depthwise conv, compiled block rows, target summary
#   sass    benchmarks/tools/sass_report.py (static, as on any CPU)    (limit 120 s)
# Other stages on request: tune (launch-configuration sweep), hostsplit (where the host
# time of a call goes), suite (the whole CPU test suite on this machine).
# Results go to $OUT (default benchmarks/results/gpu). Each stage has its own time limit
# (above; STAGE_LIMIT=seconds overrides them all) so that one slow stage cannot eat the
# slot: the whole default run stays under 11 minutes, and the stages that matter most run
# first. The static checks of tests/triton/test_triton_compile.py are left to the sass
# stage and to CPU machines.
# Needs torch with CUDA, triton, pytest, hypothesis (pytest-xdist if present).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
PY=${PY:-python3}
STAGES=${*:-env tests oracle bench sass}
LIMIT=${STAGE_LIMIT:-}
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 12")
BENCH_ARGS=${BENCH_ARGS:-}
status=0

run() {  # run SECONDS LOGFILE CMD...: time-limited, output to the log, failures counted
  local limit=${LIMIT:-$1} log=$2; shift 2
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "(stage timed out after ${limit} s)" >> "$log"
  [ $rc -ne 0 ] && status=1
  return 0
}

for stage in $STAGES; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    env)
      { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
        $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
        git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
      } 2>&1 | tee "$OUT/env.txt" ;;
    tests)  # the kernel suite (its triton-cuda case), tests/triton on CUDA tensors, test_cuda.py
      TORCHSHIFT2_TEST_DEVICE=cuda TORCHSHIFT2_KERNEL_BACKENDS=triton-cuda \
        run 200 "$OUT/tests-cuda.txt" $PY -m pytest -q -p no:cacheprovider $XDIST \
        tests/test_backends.py tests/test_regressions.py tests/triton tests/test_cuda.py \
        --ignore=tests/triton/test_triton_compile.py
      tail -15 "$OUT/tests-cuda.txt" ;;
    oracle)  # one process per padding: compiling the kernel variants is the slow part
      pids=""
      for padding in zeros border periodic reflect symmetric; do
        timeout "${LIMIT:-100}" $PY benchmarks/oracle_check.py --backend triton --device cuda --large \
          --trials 2 --paddings $padding > "$OUT/oracle-$padding.log" 2>&1 & pids="$pids $!"
      done
      for pid in $pids; do wait $pid || status=1; done
      cat "$OUT"/oracle-*.log | grep -v Warn > "$OUT/oracle.txt"; rm -f "$OUT"/oracle-*.log
      grep -v "^ " "$OUT/oracle.txt" | tail -8 ;;
    bench)
      run 240 "$OUT/bench.txt" $PY benchmarks/gpu_bench.py --out "$OUT" $BENCH_ARGS
      sed -n '/^ratios/,$p' "$OUT/bench.txt" ;;
    sass)
      run 120 "$OUT/sass-sm90.txt" $PY benchmarks/tools/sass_report.py --json "$OUT/sass-sm90.json"
      grep -c "regs" "$OUT/sass-sm90.txt" ;;
    tune)
      run 600 "$OUT/tune.txt" $PY benchmarks/gpu_tune.py --out "$OUT"
      grep -v "^ \|^$" "$OUT/tune.txt" | tail -40 ;;
    hostsplit)
      run 120 "$OUT/host-split.txt" $PY benchmarks/gpu_host_split.py
      cat "$OUT/host-split.txt" ;;
    suite)  # the whole CPU suite on this machine too (its own C++ build)
      run 600 "$OUT/tests-suite.txt" $PY -m pytest -q -p no:cacheprovider $XDIST tests
      tail -15 "$OUT/tests-suite.txt" ;;
    *) echo "unknown stage $stage"; status=2 ;;
  esac
done
echo "=== done ($(date +%T)), status $status"
exit $status
