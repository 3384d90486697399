"""A real Slurm cluster on this machine for the tests (Debian's slurm-wlm and munge; `.ci/run` installs them):
munged, slurmctld and one slurmd per node started as root from a generated slurm.conf in a folder of their own
(own ports, own munge socket and key, no cgroups: processes are tracked as Linux processes), stopped afterwards.
`SlurmCluster.start` returns why it cannot run instead of raising, so the tests can skip.

Two nodes, node1 and node2, each a slurmd of its own (`slurmd -N`): a job of two nodes gets a real node list
and srun starts one task on each. The daemons run in a mount namespace of their own whose /etc/hosts also
names node1 and node2 (this machine), so what a job starts on one node reaches the other under its node
name, as on a real cluster. Where no such namespace can be made, one node named as this machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
START_TIMEOUT_S = 30.0
NODES = ("node1", "node2")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_hosts_namespace() -> bool:
    """Whether this process may start programs in a mount namespace with an /etc/hosts of its own."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


class SlurmCluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.munge_socket = folder / "munge" / "socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]
        self.namespace = own_hosts_namespace()
        self.nodes = list(NODES) if self.namespace else [self.host]

    @staticmethod
    def binary(name: str) -> str:
        """The daemons live in /usr/sbin, which a non-login PATH may lack."""
        return shutil.which(name) or (f"/usr/sbin/{name}" if Path("/usr/sbin", name).is_file() else "")

    def why_not(self) -> str:
        missing = [name for name in (*DAEMONS, *CLIENTS) if not self.binary(name)]
        if missing:
            return f"Slurm is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
        if os.geteuid() != 0:
            return "starting slurmctld and slurmd for the tests needs root"
        return ""

    def write_config(self) -> None:
        for sub in ("state", "log", "munge", *(f"spool/{node}" for node in self.nodes)):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "munge").chmod(0o700)
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        f = self.folder
        nodes = [f"NodeName={name} NodeAddr=127.0.0.1 Port={free_port()} "
                 f"CPUs={os.cpu_count() or 1} State=UNKNOWN" for name in self.nodes]
        self.conf.write_text("\n".join([
            "ClusterName=pipelinetest", f"SlurmctldHost={self.host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={free_port()}",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={f}/state", f"SlurmdSpoolDir={f}/spool/%n",
            f"SlurmctldPidFile={f}/slurmctld.pid", f"SlurmdPidFile={f}/slurmd-%n.pid",
            f"SlurmctldLogFile={f}/log/slurmctld.log", f"SlurmdLogFile={f}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            # finished jobs stay visible to squeue (no accounting database here); scancel's SIGKILL comes soon
            "ReturnToService=2", "MinJobAge=3600", "KillWait=5",
            *nodes, "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self) -> str:
        """Start the daemons; returns '' when every node is idle, else why it did not come up."""
        why = self.why_not()
        if why:
            return why
        self.write_config()
        m = self.folder / "munge"
        commands = [[self.binary("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={m}/munge.key",
                     f"--pid-file={m}/pid", f"--log-file={m}/log", f"--seed-file={m}/seed"],
                    self.in_namespace([self.binary("slurmctld"), "-f", str(self.conf)]),
                    *(self.in_namespace([self.binary("slurmd"), "-f", str(self.conf), "-N", name])
                      for name in self.nodes)]
        for cmd in commands:
            result = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
            if result.returncode != 0:
                self.stop()
                return f"{Path(cmd[0]).name} did not start (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            state = subprocess.run([self.binary("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                   env=self.env)
            if state.stdout.split() == ["idle"] * len(self.nodes):
                return ""
            time.sleep(0.25)
        self.stop()
        return f"the Slurm nodes did not become idle within {START_TIMEOUT_S:g} s (logs in {self.folder}/log)"

    def in_namespace(self, cmd: list[str]) -> list[str]:
        """cmd started in a new mount namespace whose /etc/hosts adds the node names (the daemon it starts, and
        every job step it runs, stays there; the rest of the machine does not see it)."""
        if not self.namespace:
            return cmd
        hosts = self.folder / "hosts"
        if not hosts.exists():
            original = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
            hosts.write_text(f"{original.rstrip()}\n127.0.0.1 {' '.join(self.nodes)}\n")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *cmd]

    def stop(self) -> None:
        for name in (*(f"slurmd-{node}.pid" for node in self.nodes), "slurmctld.pid", "munge/pid"):
            pid_file = self.folder / name
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def job_nodes(self, job_id: str) -> list[str]:
        """The nodes a job ran on, in the order of its node list (scontrol show hostnames)."""
        listed = subprocess.run(["squeue", "-h", "--states=all", "-o", "%N", "-j", job_id], capture_output=True,
                                text=True, env=self.env, check=True).stdout.strip()
        return subprocess.run(["scontrol", "show", "hostnames", listed], capture_output=True, text=True,
                              env=self.env, check=True).stdout.split()

    def wait(self, job_ids: list[str], timeout: float = 120.0) -> dict[str, str]:
        """Wait until none of the jobs is pending (other than on a dependency that can never be met) or
        running; returns job or array task id -> state."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
                                 capture_output=True, text=True, env=self.env).stdout
            rows = [line.split("|") for line in out.split()]
            states = {row[0]: row[1] for row in rows}
            busy = [row for row in rows if row[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
                    and row[2] != "DependencyNeverSatisfied"]
            if not busy and len({i.split("_")[0] for i in states}) >= len(set(job_ids)):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm jobs {job_ids} still busy after {timeout:g} s: {out}")
            time.sleep(0.5)
