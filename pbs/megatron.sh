# shellcheck shell=bash
# shellcheck disable=SC2034  # hosts, num_nodes, num_gpus, launcher and launch are read by the templates
# Sourced by pbs/train.pbs and pbs/convert.pbs after pbs/common.sh: the training environment and the
# launch of one Megatron-LM program on every GPU of the job's nodes.
#   megatron_environment            ENV_DIR's activate.sh, MEGATRON_PATH (the knob wins), TRAIN_PYTHON
#   job_gpus                        hosts[], num_nodes, GPUS_PER_NODE (nvidia-smi's count, else 8), num_gpus
#   job_launcher                    launcher=mpi|torchrun from LAUNCHER=auto|mpi|torchrun (several nodes:
#                                   mpirun, or under Slurm one torchrun per node through srun)
#   apply_job_environment FILE      `export NAME VALUE` / `unset NAME` lines (train_env.txt), read, never run
#   megatron_launch SCRIPT          sets launch=(...) that runs SCRIPT on every GPU (append its arguments): mpirun on
#                                   the node file's hosts (other nodes reached through pbs_tmrsh under PBS),
#                                   srun + torchrun per node under Slurm, or torchrun on this node

megatron_environment() {
    local megatron_knob="${MEGATRON_PATH:-}"
    if [[ -n "${ENV_DIR:-}" ]]; then
        # shellcheck source=/dev/null
        source "${ENV_DIR}/activate.sh"
    fi
    if [[ -n "${megatron_knob}" ]]; then
        export MEGATRON_PATH="${megatron_knob}"
    fi
    : "${MEGATRON_PATH:?MEGATRON_PATH (or ENV_DIR with its activate.sh) is needed}"
    # the interpreter that runs Megatron: the environment's python, else this machine's python3
    if [[ -z "${TRAIN_PYTHON:-}" ]]; then
        if [[ -n "${ENV_DIR:-}" ]]; then TRAIN_PYTHON=python; else TRAIN_PYTHON=python3; fi
    fi
    command -v "${TRAIN_PYTHON}" >/dev/null || { echo "error: TRAIN_PYTHON=${TRAIN_PYTHON}: not found" >&2; exit 2; }
    export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
}

job_gpus() {
    mapfile -t hosts < <(awk 'NF && !seen[$1]++ {print $1}' "${PBS_NODEFILE:?PBS_NODEFILE is not set}")
    num_nodes=${#hosts[@]}
    (( num_nodes > 0 )) || { echo "error: ${PBS_NODEFILE} lists no host" >&2; exit 2; }
    if [[ -z "${GPUS_PER_NODE:-}" ]]; then
        GPUS_PER_NODE=8
        if command -v nvidia-smi >/dev/null 2>&1; then
            local counted
            counted=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
            if (( counted > 0 )); then GPUS_PER_NODE=${counted}; fi
        fi
    fi
    num_gpus=$(( num_nodes * GPUS_PER_NODE ))
}

job_launcher() {
    launcher="${LAUNCHER:-auto}"
    if [[ "${launcher}" == auto ]]; then
        if command -v mpirun >/dev/null 2>&1; then launcher=mpi; else launcher=torchrun; fi
    fi
    case "${launcher}" in
        mpi|torchrun) ;;
        *) echo "error: LAUNCHER=${launcher}: expected auto, mpi or torchrun" >&2; exit 2 ;;
    esac
    if [[ "${launcher}" == torchrun ]] && (( ${num_nodes:-1} > 1 )) && [[ -z "${SLURM_JOB_ID:-}" ]]; then
        echo "error: LAUNCHER=torchrun runs on one node here; this job has ${num_nodes} (use LAUNCHER=mpi," \
             "or Slurm, where srun starts one torchrun per node)" >&2
        exit 2
    fi
}

apply_job_environment() {
    local action name value
    while read -r action name value; do
        [[ "${name}" =~ ^[A-Z_][A-Z0-9_]*$ ]] || { echo "error: $1: bad variable name '${name}'" >&2; exit 2; }
        case "${action}" in
            export) export "${name}=${value}"; echo "environment: ${name}=${value}" ;;
            unset) unset "${name}"; echo "environment: ${name} unset" ;;
            *) echo "error: $1: expected 'export NAME VALUE' or 'unset NAME', got '${action}'" >&2; exit 2 ;;
        esac
    done < "$1"
}

# How mpirun starts its daemons on the other nodes of a PBS job: through PBS's own pbs_tmrsh (the TM interface:
# the ranks belong to the job, qdel and the walltime reach them, no ssh between nodes needed), by
# pbs/tm_rsh.sh as OpenMPI's rsh agent. Not when the site or the user chose an agent (OMPI_MCA_plm_rsh_agent),
# under Slurm (mpirun asks srun there), on one node, or where PBS has no pbs_tmrsh (then mpirun's own way).
mpi_remote_start() {
    remote_start=()
    if (( num_nodes < 2 )) || [[ -n "${SLURM_JOB_ID:-}" || -n "${OMPI_MCA_plm_rsh_agent:-}" ]]; then return; fi
    local exec_dir
    PBS_TMRSH=$(command -v pbs_tmrsh || true)
    if [[ -z "${PBS_TMRSH}" && -r "${PBS_CONF_FILE:-/etc/pbs.conf}" ]]; then
        # a batch job's PATH may lack PBS's bin: pbs.conf says where PBS is (read, never run)
        exec_dir=$(sed -n 's/^[[:space:]]*PBS_EXEC=//p' "${PBS_CONF_FILE:-/etc/pbs.conf}" | tail -n 1)
        if [[ -x "${exec_dir}/bin/pbs_tmrsh" ]]; then PBS_TMRSH="${exec_dir}/bin/pbs_tmrsh"; fi
    fi
    if [[ -n "${PBS_TMRSH}" ]]; then
        export PBS_TMRSH
        # every daemon started from here, each staying in its PBS task (a daemon that detaches may be killed
        # with its finished task, and mpirun then waits for it for ever)
        remote_start=(--mca plm_rsh_agent "${REPO_DIR}/pbs/tm_rsh.sh" --mca plm_rsh_no_tree_spawn 1
                      --mca orte_leave_session_attached 1)
    fi
}

megatron_launch() {
    local script=$1 job_number="${PBS_JOBID%%.*}" digits
    export MASTER_ADDR="${hosts[0]}"
    digits="${job_number//[^0-9]/}"
    export MASTER_PORT="${MASTER_PORT:-$(( 10000 + 10#${digits:-0} % 50000 ))}"
    if [[ "${launcher}" == mpi ]]; then
        local forward=() var slots=""
        for var in MASTER_ADDR MASTER_PORT CUDA_DEVICE_MAX_CONNECTIONS NVTE_FLASH_ATTN NVTE_FUSED_ATTN \
                   NVTE_UNFUSED_ATTN TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD PYTHONPATH LD_LIBRARY_PATH PATH; do
            if [[ -n "${!var:-}" ]]; then forward+=(-x "${var}"); fi
        done
        # the job's hosts, from the node file: an mpirun built without PBS support (Debian's OpenMPI) would
        # otherwise start every rank on this node
        printf -v slots "%s:${GPUS_PER_NODE}," "${hosts[@]}"
        mpi_remote_start
        # rank_env.sh gives every rank torch's RANK/WORLD_SIZE/LOCAL_RANK from OpenMPI's (Megatron without --use-mpi)
        launch=(mpirun --display-allocation --report-bindings --oversubscribe -np "${num_gpus}"
                --npernode "${GPUS_PER_NODE}" -bind-to none -map-by slot --host "${slots%,}" "${remote_start[@]}"
                "${forward[@]}" bash "${REPO_DIR}/pbs/rank_env.sh" "${TRAIN_PYTHON}" "${script}")
    elif (( num_nodes > 1 )); then
        # Slurm: srun starts one torchrun per node; they meet at the first node of the job's node list
        launch=(srun --nodes "${num_nodes}" --ntasks-per-node 1 --kill-on-bad-exit=1
                bash "${REPO_DIR}/pbs/torchrun_node.sh" "${TRAIN_PYTHON}" "${num_nodes}" "${GPUS_PER_NODE}"
                "${MASTER_ADDR}" "${MASTER_PORT}" "${script}")
    else
        launch=("${TRAIN_PYTHON}" -m torch.distributed.run --nnodes 1 --nproc-per-node "${GPUS_PER_NODE}"
                --master-addr "${MASTER_ADDR}" --master-port "${MASTER_PORT}" "${script}")
    fi
}
