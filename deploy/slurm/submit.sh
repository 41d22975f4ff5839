#!/usr/bin/env bash
# Queues cluscomp on Slurm: the cluster stage as an array of SHARDS tasks, then the finishing
# run (finetune, eval, export) once all of them succeeded.
#
#   SHARDS=8 CLUSCOMP_ARGS="--model M --out O --bits 2 --calib C" deploy/slurm/submit.sh \
#     --partition=gpu --gres=gpu:1
#
# Extra arguments go to both sbatch calls. Prints the two job ids.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${SHARDS:?set SHARDS to the number of array tasks}"
: "${CLUSCOMP_ARGS:?set CLUSCOMP_ARGS to the compress flags}"
export CLUSCOMP_ROOT="${CLUSCOMP_ROOT:-$(cd "$here/../.." && pwd)}"
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" "$@" "$here/cluster.sbatch")
array=${array%%;*}
finish=$(sbatch --parsable --dependency="afterok:$array" "$@" "$here/finetune.sbatch")
finish=${finish%%;*}
echo "cluster array job $array ($SHARDS shards); finetune job $finish runs after it"
