#!/bin/bash
# Issue #3's MNIST Table 2 at the paper's N=1000: the gray box for one defense, resumable across sessions and machines.
#
# Its whole state lives in docs/runs/mnist-gray-n1000/ and is committed as it grows: results.csv, the trained models
# (cache/models/), and the stored 200-image chunks of an unfinished attack (adversarial/*.parts/). Finished attacks'
# arrays and the decoded data are not committed (.gitignore): a finished attack's rows are in results.csv, and the
# run skips it. On one CPU thread C&W-hc takes about 10 s per MNIST image (about 3 h per defense), hence the chunks.
#
#   OMP_NUM_THREADS=1 bash benchmarks/mnist_gray_n1000.sh DEFENSE [ATTACKS] [extra pdm-bench run options...]
#   e.g. bash benchmarks/mnist_gray_n1000.sh pdm cw-hc       (one defense per core; add --device cuda on a GPU)
set -euo pipefail
defense=${1:?usage: mnist_gray_n1000.sh DEFENSE [ATTACKS] [options]}
attacks=${2:-fgsm-0.05,fgsm-0.1,bim-0.05,bim-0.1,cw,cw-hc,jsma}
shift $(( $# < 2 ? $# : 2 ))
root=$(cd "$(dirname "$0")/.." && pwd)
state=$root/docs/runs/mnist-gray-n1000
exec pdm-bench run --threat gray --defense "$defense" --dataset mnist --data-dir "${PDM_BENCH_DATA:-$root/../shared/data}" \
  --n-samples 1000 --attacks "$attacks" --results-dir "$state" --cache-dir "$state/cache" --no-progress "$@"
