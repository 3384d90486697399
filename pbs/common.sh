# shellcheck shell=bash
# Sourced by every pbs/ template right after `set -euo pipefail`:
#   source "${REPO_DIR:?}/pbs/common.sh"; job_start VAR1 VAR2 ...
# job_start checks the named inputs are set, tees all output into a per-job log under EXP_DIR,
# prints START/END, job id, hosts and inputs, and records the exit status when the job ends.

: "${REPO_DIR:?REPO_DIR (the repository checkout) must be passed with -v}"
: "${EXP_DIR:?EXP_DIR must be passed with -v}"

# Under Slurm (sbatch of the same template) the PBS variables the templates read are Slurm's own
if [[ -n "${SLURM_JOB_ID:-}" && -z "${PBS_JOBID:-}" ]]; then
    if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        PBS_JOBID="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        PBS_ARRAY_INDEX="${SLURM_ARRAY_TASK_ID}"
        export PBS_ARRAY_INDEX
    else
        PBS_JOBID="${SLURM_JOB_ID}"
    fi
    PBS_JOBNAME="${SLURM_JOB_NAME:-job}"
    PBS_O_WORKDIR="${SLURM_SUBMIT_DIR:-$(pwd)}"
    # one line per node, as PBS writes it (pbs/megatron.sh takes the hosts and the master address from it)
    PBS_NODEFILE="$(mktemp "${TMPDIR:-/tmp}/nodefile.XXXXXX")"
    SLURM_NODEFILE_MADE="${PBS_NODEFILE}"
    scontrol show hostnames "${SLURM_JOB_NODELIST:?}" > "${PBS_NODEFILE}"
    export PBS_JOBID PBS_JOBNAME PBS_O_WORKDIR PBS_NODEFILE
fi

PY="${PY:-${PIPELINE_PYTHON:-${REPO_DIR}/.venv/bin/python}}"
export PYTHONUNBUFFERED=1

job_start() {
    local var
    for var in "$@"; do
        : "${!var:?${var} must be passed to this job with -v}"
    done
    JOB_LOG_DIR="${EXP_DIR}/logs"
    mkdir -p "${JOB_LOG_DIR}"
    local id="${PBS_JOBID:-manual.$$}"
    JOB_TAG="${PBS_JOBNAME:-job}-${id//[\[\]]/_}"
    JOB_LOG="${JOB_LOG_DIR}/${JOB_TAG}.log"
    exec > >(tee -a "${JOB_LOG}") 2>&1
    JOB_START_S=${SECONDS}
    echo "START $(date -Is) job=${id} name=${PBS_JOBNAME:-} array_index=${PBS_ARRAY_INDEX:-}"
    echo "hosts: $( { sort -u "${PBS_NODEFILE:-/dev/null}" 2>/dev/null || hostname; } | tr '\n' ' ')"
    echo "workdir: ${PBS_O_WORKDIR:-$(pwd)} repo: ${REPO_DIR} exp: ${EXP_DIR}"
    for var in "$@"; do
        echo "input ${var}=${!var}"
    done
    trap '_job_end $?' EXIT
    cd "${REPO_DIR}" || exit
}

_job_end() {
    local status=$1
    printf '{"job": "%s", "name": "%s", "array_index": "%s", "status": %d, "end": "%s", "seconds": %d}\n' \
        "${PBS_JOBID:-manual}" "${PBS_JOBNAME:-}" "${PBS_ARRAY_INDEX:-}" "${status}" "$(date -Is)" \
        "$((SECONDS - JOB_START_S))" > "${JOB_LOG_DIR}/${JOB_TAG}.status"
    echo "END $(date -Is) status=${status} elapsed=$((SECONDS - JOB_START_S))s"
    if [[ -n "${SLURM_NODEFILE_MADE:-}" ]]; then rm -f "${SLURM_NODEFILE_MADE}"; fi
}
