#!/bin/bash
# OpenMPI's rsh agent in a PBS job of several nodes (pbs/megatron.sh: mpirun --mca plm_rsh_agent): starts
# mpirun's daemon on HOST through PBS's pbs_tmrsh (PBS_TMRSH), so that it runs inside the job there.
#   tm_rsh.sh HOST COMMAND...
# OpenMPI hands the daemon's command line over as text for a remote shell, as it would to ssh; pbs_tmrsh
# runs a program with its arguments, so the text goes to a shell on HOST, as ssh would give it to one.
set -euo pipefail
host=$1
shift
exec "${PBS_TMRSH:-pbs_tmrsh}" "${host}" /bin/sh -c "$*"
