#!/bin/bash
# Run by srun once per node of a Slurm job (pbs/megatron.sh, LAUNCHER=torchrun on several nodes): this node's
# torchrun, its rank the node's index in the job.
#   torchrun_node.sh PYTHON NUM_NODES GPUS_PER_NODE MASTER_ADDR MASTER_PORT SCRIPT [ARGS...]
set -euo pipefail
python=$1 num_nodes=$2 gpus_per_node=$3 master_addr=$4 master_port=$5
shift 5
exec "${python}" -m torch.distributed.run --nnodes "${num_nodes}" --node-rank "${SLURM_NODEID:?not started by srun}" \
    --nproc-per-node "${gpus_per_node}" --master-addr "${master_addr}" --master-port "${master_port}" "$@"
