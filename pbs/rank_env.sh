#!/bin/bash
# Run by mpirun once per rank (pbs/megatron.sh): torch.distributed's env:// rendezvous wants RANK,
# WORLD_SIZE and LOCAL_RANK, which OpenMPI names OMPI_COMM_WORLD_*; the LLM-jp fork reads those itself
# (--use-mpi), upstream Megatron does not. Values already set are kept.
set -euo pipefail
export RANK="${RANK:-${OMPI_COMM_WORLD_RANK:?not started by OpenMPI mpirun}}"
export WORLD_SIZE="${WORLD_SIZE:-${OMPI_COMM_WORLD_SIZE:?}}"
export LOCAL_RANK="${LOCAL_RANK:-${OMPI_COMM_WORLD_LOCAL_RANK:?}}"
export LOCAL_WORLD_SIZE="${LOCAL_WORLD_SIZE:-${OMPI_COMM_WORLD_LOCAL_SIZE:-}}"
exec "$@"
