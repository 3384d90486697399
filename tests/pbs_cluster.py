"""A real OpenPBS for the tests: built once per machine from ../shared/vendor/openpbs-*.tar.gz, then a server,
scheduler and two moms started as root in private namespaces, stopped and removed afterwards.
`PBSCluster.start` returns why it cannot run instead of raising, so the tests can skip.

The build (`./autogen.sh`, `./configure --prefix`, `make`, `make install DESTDIR`; minutes) goes to
~/.cache/midtrain-openpbs/<sha256 of the tarball, 16 digits>/exec, outside the repo, so later sessions only deploy it;
`.ci/run` builds it before `make test` (`python3 tests/pbs_cluster.py build`). Standard library only.

PBS refuses loopback addresses for its server and node names, and its traffic must not reach this machine's
own address, so each node is a holder process in new net, mount, UTS and IPC namespaces: its own host name
(node1, node2), `lo` and one end of a veth pair between the two (10.87.0.1, 10.87.0.2; this kernel has no
`dummy` driver), and, bound in its mount namespace only, a private /etc/hosts naming both, a private
/var/spool/pbs (PBS_HOME: PBS refuses one whose path runs through world-writable /tmp), /run/postgresql (the
server's own PostgreSQL) and /var/tmp (qstat writes a fixed-name file there). pbs.conf is private too
(PBS_CONF_FILE). node1 runs pbs_server, pbs_sched, pbs_comm and a mom; node2 a mom. The clients reach the
server through wrappers in <folder>/bin (qsub, qstat, qdel, ...) that run the real command in node1's
namespaces with nsenter: put that folder first on PATH.

The server has ABCI's shape: queues rt_HF (each chunk of `-l select=N` a whole node), rt_HG and rt_HC,
job history on (`qstat -x`), `-P <group>` accepted, root allowed to submit (acl_roots: the tests run as root,
so their jobs do; a mom tracks no root-owned processes, so a qdel'ed job of root's exits 0, a user's 271).
What the mom adds to every job's environment (its pbs_environment) is where pbs.conf is, and OpenMPI's
permission to run as root.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TARBALLS = SHARED / "vendor"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "midtrain-openpbs"
NODES = ("node1", "node2")
SUBNET = "10.87.0"
QUEUES = {"rt_HF": "scatter:excl", "rt_HG": "free", "rt_HC": "free"}   # queue -> default placement
NCPUS = 4            # per node, so that a few one-CPU jobs run at once
CLIENTS = ("qsub", "qstat", "qdel", "qmgr", "qsig", "qalter", "qrls", "qhold", "pbsnodes", "tracejob")
BUILD_TOOLS = ("autoconf", "automake", "libtoolize", "make", "gcc", "g++", "swig", "pg_config")
RUNTIME_TOOLS = ("unshare", "nsenter", "ip", "mount", "su", "initdb")
NAMESPACES = ("net", "mnt", "uts", "ipc")
START_TIMEOUT_S = 90.0


# --------------------------------------------------------------------------------------------------------
# The build: once per machine and tarball
# --------------------------------------------------------------------------------------------------------
def tarball() -> Path | None:
    found = sorted(TARBALLS.glob("openpbs-*.tar.gz"))
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _which(name: str) -> str:
    """Also /usr/sbin and PostgreSQL's bin folder, which a non-login PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", *sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")))):
        if Path(folder, name).is_file():
            return str(Path(folder, name))
    return ""


def build_dir(source: Path) -> Path:
    return CACHE / _sha256(source)[:16]


def installed(source: Path) -> Path | None:
    """PBS_EXEC of a finished build of `source`, if there is one."""
    folder = build_dir(source)
    return folder / "exec" if (folder / "complete").is_file() else None


def build(source: Path, log=print) -> tuple[Path | None, str]:
    """(PBS_EXEC, '') after building `source` once into the cache (a lock keeps two sessions from building at
    once), or (None, why not). A failed build is remembered: its reason is given again until <cache>/<key>/failed
    is removed."""
    folder = build_dir(source)
    if installed(source):
        return folder / "exec", ""
    missing = [tool for tool in BUILD_TOOLS if not _which(tool)]
    if missing:
        return None, (f"OpenPBS cannot be built here: {', '.join(missing)} missing (.ci/run installs the "
                      "Debian packages)")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed(source):
            return folder / "exec", ""
        if (folder / "failed").is_file():
            return None, (folder / "failed").read_text().strip()
        prefix = folder / "exec"
        for stale in folder.glob("work.*"):       # left by a build that was killed (the lock is ours now)
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="work.", dir=folder))
        build_log = folder / "build.log"
        try:
            log(f"building OpenPBS from {source.name} into {prefix} (minutes, once per machine; log: {build_log})")
            subprocess.run(["tar", "xzf", str(source), "-C", str(work)], check=True)
            tree = next(p for p in work.iterdir() if p.is_dir())
            steps = [["./autogen.sh"], ["./configure", f"--prefix={prefix}"],
                     ["make", f"-j{os.cpu_count() or 1}"], ["make", "install", f"DESTDIR={work / 'stage'}"]]
            with open(build_log, "w") as out:
                for step in steps:
                    out.write(f"$ {' '.join(step)}\n")
                    out.flush()
                    if subprocess.run(step, cwd=tree, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                        why = f"the OpenPBS build failed at `{' '.join(step)}` (see {build_log})"
                        (folder / "failed").write_text(f"{why}; remove {folder / 'failed'} to try again\n")
                        return None, why
            shutil.rmtree(prefix, ignore_errors=True)
            os.rename(work / "stage" / prefix.relative_to("/"), prefix)
            (folder / "complete").write_text(f"{source}\n")
            return prefix, ""
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Namespaces: a holder process, entered with nsenter
# --------------------------------------------------------------------------------------------------------
def _namespace_ids(pid: int | str) -> dict[str, str]:
    return {kind: os.readlink(f"/proc/{pid}/ns/{kind}") for kind in NAMESPACES}


class Namespace:
    """A holder process (sleep) in new net, mount, UTS and IPC namespaces. Nothing enters it before every one
    of its namespaces is seen to differ from this process's own (unshare runs after the fork returns)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--ipc", "--propagation", "private",
                                        "sleep", "infinity"], stdin=subprocess.DEVNULL, start_new_session=True)
        ours = _namespace_ids("self")
        deadline = time.monotonic() + 10
        while True:
            try:
                theirs = _namespace_ids(self.holder.pid)
            except OSError:
                theirs = ours
            if all(theirs[k] != ours[k] for k in NAMESPACES):
                self.ids = theirs
                return
            if self.holder.poll() is not None or time.monotonic() > deadline:
                self.holder.kill()
                self.holder.wait()
                raise OSError(f"unshare did not make new namespaces (exit {self.holder.returncode})")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.holder.pid

    def enter(self, wd: str | None = None) -> list[str]:
        """The nsenter prefix of a command run in these namespaces (in `wd`, else the caller's folder)."""
        assert _namespace_ids(self.pid) == self.ids, "the holder process is gone"
        return ["nsenter", f"--target={self.pid}", "--net", "--mount", "--uts", "--ipc", f"--wd={wd or os.getcwd()}",
                "--"]

    def run(self, cmd: list[str], env: dict | None = None, timeout: float = 120, check: bool = True,
            wd: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.enter(wd or "/"), *cmd], capture_output=True, text=True, env=env,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}: {result.stdout[-1500:]}"
                               f"{result.stderr[-1500:]}")
        return result

    def members(self) -> list[int]:
        """Every process in this network namespace but the holder (daemons, jobs, their children)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == self.ids["net"]:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def close(self, grace_s: float = 10.0) -> None:
        """End what is left in the namespace (SIGTERM, then SIGKILL), then the holder: the namespaces, their
        veth end and their mounts go with the last process."""
        if self.holder.poll() is not None:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.members():
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while self.members() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.holder.kill()
        self.holder.wait()


# the private mounts of a node: SOURCE over TARGET. A target this machine lacks (no /var/spool/pbs here) is made
# in a tmpfs laid over its parent in this mount namespace only.
MOUNT_SCRIPT = r"""
set -eu
private() {
    if [ ! -e "$2" ]; then
        mount -t tmpfs -o mode=0755 private "$(dirname "$2")"
        if [ -d "$1" ]; then mkdir "$2"; else : > "$2"; fi
    fi
    mount --bind "$1" "$2"
}
ip link set lo up
hostname "$1"
shift
while [ $# -ge 2 ]; do private "$1" "$2"; shift 2; done
"""


class PBSCluster:
    def __init__(self, folder: Path, nodes: tuple[str, ...] = NODES) -> None:
        if not 1 <= len(nodes) <= 2:
            raise ValueError("one node, or two joined by a veth pair")
        self.folder = folder
        self.nodes = list(nodes)
        self.server = self.nodes[0]
        self.bin = folder / "bin"
        self.exec: Path | None = None
        self.spaces: dict[str, Namespace] = {}
        self.started: list[str] = []

    # --- what is needed ---------------------------------------------------------------------------------
    def why_not(self) -> str:
        source = tarball()
        if source is None:
            return f"no OpenPBS source tarball in {TARBALLS} (openpbs-*.tar.gz)"
        if os.geteuid() != 0:
            return "starting a PBS server, its scheduler and moms for the tests needs root"
        missing = [tool for tool in RUNTIME_TOOLS if not _which(tool)]
        if missing:
            return f"{', '.join(missing)} missing (util-linux, iproute2, postgresql: .ci/run installs them)"
        try:
            postgres = subprocess.run(["id", "-u", "postgres"], capture_output=True, text=True)
        except OSError:
            postgres = None
        if postgres is None or postgres.returncode != 0:
            return "no postgres user (PBS runs its datastore as it: apt-get install postgresql)"
        self.exec, why = build(source)
        return why

    # --- start ------------------------------------------------------------------------------------------
    def address(self, node: str) -> str:
        return f"{SUBNET}.{self.nodes.index(node) + 1}"

    def home(self, node: str) -> Path:
        return self.folder / node / "home"

    def conf(self, node: str) -> Path:
        return self.folder / node / "pbs.conf"

    def env(self, node: str) -> dict[str, str]:
        path = f"{self.exec}/bin:{self.exec}/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        pg_bin = str(Path(_which("initdb")).parent)
        return {"PATH": f"{path}:{pg_bin}", "PBS_CONF_FILE": str(self.conf(node)), "LANG": "C.UTF-8",
                "HOME": os.environ.get("HOME", "/root")}

    def run(self, node: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return self.spaces[node].run(cmd, env=self.env(node), **kw)

    def start(self, attempts: int = 2) -> str:
        """Start everything; returns '' when both nodes are free, else why not (nothing left running). A failed
        start is tried again once: on a loaded machine PBS's first start of its datastore can run out of time."""
        why = self.why_not()
        if why:
            return why
        logs = self.folder / "logs"
        for attempt in range(1, attempts + 1):
            try:
                self._start()
                return ""
            except (OSError, RuntimeError, subprocess.SubprocessError, TimeoutError) as exc:
                why = str(exc)
                self.stop()
                logs.mkdir(parents=True, exist_ok=True)
                (logs / f"start-{attempt}.txt").write_text(why + "\n")
        return f"the PBS cluster did not start ({attempts} attempts): {why[-1000:]} (logs in {logs})"

    def _start(self) -> None:
        hosts = self.folder / "hosts"
        self.folder.mkdir(parents=True, exist_ok=True)
        hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                         + "".join(f"{self.address(n)} {n}\n" for n in self.nodes))
        for node in self.nodes:
            self.spaces[node] = Namespace()
            private = {self.home(node): "/var/spool/pbs", self.folder / node / "postgresql": "/run/postgresql",
                       self.folder / node / "var-tmp": "/var/tmp", hosts: "/etc/hosts"}
            for source in private:
                if source != hosts:
                    source.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.folder / node / "postgresql", "postgres", "postgres")
            (self.folder / node / "var-tmp").chmod(0o1777)
            self.spaces[node].run(["sh", "-c", MOUNT_SCRIPT, "mounts", node,
                                   *(str(path) for pair in private.items() for path in pair)])
        # the link: one veth end in each node (both in node1 when it is alone), each with its address
        first = self.spaces[self.nodes[0]]
        peer = ["netns", str(self.spaces[self.nodes[1]].pid)] if len(self.nodes) > 1 else []
        first.run(["ip", "link", "add", "pbs0", "type", "veth", "peer", "name", "pbs1", *peer])
        for index, node in enumerate(self.nodes):
            device = "pbs0" if index == 0 else "pbs1"
            self.spaces[node].run(["ip", "addr", "add", f"{self.address(node)}/24", "dev", device])
            self.spaces[node].run(["ip", "link", "set", device, "up"])
        if len(self.nodes) == 1:
            first.run(["ip", "link", "set", "pbs1", "up"])
        for node in self.nodes:
            self._deploy(node)
        self._write_clients()
        for node in self.nodes:
            self.started.append(node)      # stopped by pbs_init.d even if it starts only some of its daemons
            self.run(node, [f"{self.exec}/libexec/pbs_init.d", "start"], timeout=START_TIMEOUT_S)
        self._configure()
        self.wait_free()

    def _deploy(self, node: str) -> None:
        """pbs.conf, then PBS_HOME made by pbs_habitat (the datastore too on node1), then the mom's config and
        the environment every job gets."""
        server = node == self.server
        self.conf(node).write_text("\n".join([
            f"PBS_EXEC={self.exec}", "PBS_HOME=/var/spool/pbs", f"PBS_SERVER={self.server}",
            f"PBS_START_SERVER={int(server)}", f"PBS_START_SCHED={int(server)}", f"PBS_START_COMM={int(server)}",
            "PBS_START_MOM=1", "PBS_CORE_LIMIT=unlimited", "PBS_SCP=/bin/false", ""]))
        self.run(node, [f"{self.exec}/libexec/pbs_habitat"], timeout=START_TIMEOUT_S)
        home = self.home(node)
        # every path is the same on both nodes (one filesystem): output files are copied, never sent by rcp
        (home / "mom_priv" / "config").write_text(f"$clienthost {self.server}\n$logevent 0x1ff\n$usecp *:/ /\n")
        # a job's PATH is its login shell's (no PBS bin here, as on many sites): pbs_tmrsh is found through pbs.conf
        environment = home / "pbs_environment"
        lines = environment.read_text().splitlines()
        environment.write_text("\n".join([*lines, f"PBS_CONF_FILE={self.conf(node)}", "OMPI_ALLOW_RUN_AS_ROOT=1",
                                          "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", ""]))

    def _write_clients(self) -> None:
        """bin/<command>: the real client run in node1's namespaces, in the caller's folder."""
        self.bin.mkdir(parents=True, exist_ok=True)
        env = self.env(self.server)
        for name in CLIENTS:
            wrapper = self.bin / name
            wrapper.write_text(
                "#!/bin/sh\n# the real PBS client, run in the test cluster's namespaces (tests/pbs_cluster.py)\n"
                f'exec nsenter --target={self.spaces[self.server].pid} --net --mount --uts --ipc --wd="$PWD" -- '
                f'env PBS_CONF_FILE={env["PBS_CONF_FILE"]} {self.exec}/bin/{name} "$@"\n')
            wrapper.chmod(0o755)

    def qmgr(self, *commands: str) -> None:
        for command in commands:
            self.run(self.server, [f"{self.exec}/bin/qmgr", "-c", command])

    def _configure(self) -> None:
        self.qmgr("set server acl_roots = root", "set server flatuid = True",
                  "set server job_history_enable = True", "set server scheduler_iteration = 2")
        for node in self.nodes:
            if node != self.server:     # the server's own mom is made a node when the server first starts
                self.qmgr(f"create node {node}")
            self.qmgr(f"set node {node} resources_available.ncpus = {NCPUS}")
        for queue, place in QUEUES.items():
            self.qmgr(f"create queue {queue} queue_type = execution", f"set queue {queue} enabled = True",
                      f"set queue {queue} started = True", f"set queue {queue} resources_default.place = {place}")
        self.qmgr("set server default_queue = rt_HC", "delete queue workq")

    def wait_free(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(self.server, [f"{self.exec}/bin/pbsnodes", "-a", "-F", "json"], check=False).stdout
            try:
                states = {name: info.get("state") for name, info in json.loads(out).get("nodes", {}).items()}
            except ValueError:
                states = {}
            if sorted(states) == sorted(self.nodes) and set(states.values()) == {"free"}:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the PBS nodes are not free after {timeout:g} s: {states or out[-300:]}")
            time.sleep(0.5)

    # --- use --------------------------------------------------------------------------------------------
    def set_history(self, on: bool) -> None:
        self.qmgr(f"set server job_history_enable = {on}")

    def jobs(self, job_ids: list[str]) -> dict[str, dict]:
        """qstat -f -x -t -F json of each job (an array with its subjobs): id -> record. One id per call: given
        several, `-F json` prints only the first job."""
        found = {}
        for job_id in job_ids:
            result = self.run(self.server, [f"{self.exec}/bin/qstat", "-f", "-x", "-t", "-F", "json", job_id],
                              check=False)
            try:
                found.update(json.loads(result.stdout).get("Jobs") or {})
            except ValueError:
                raise RuntimeError(f"qstat: {result.stdout[-500:]} {result.stderr[-500:]}") from None
        return found

    def wait(self, job_ids: list[str], timeout: float = 120.0, until: str = "F") -> dict[str, dict]:
        """Wait until every job (and every subjob of an array) is in state `until` (F: finished, R: running);
        returns id -> qstat record."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.jobs(job_ids)
            if len(records) >= len(job_ids) and all(r.get("job_state") == until or (until == "F" and
                                                     r.get("job_state") == "X") for r in records.values()):
                return records
            if time.monotonic() > deadline:
                states = {k: v.get("job_state") for k, v in records.items()}
                raise TimeoutError(f"PBS jobs {job_ids} not all in state {until} after {timeout:g} s: {states}")
            time.sleep(0.5)

    # --- stop -------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """pbs_init.d stop on every node (node1 last: it stops the server's PostgreSQL too), then whatever is
        left in the namespaces, then the namespaces; PBS_HOME (the datastore) is removed, the logs are kept."""
        for node in reversed(self.started):
            try:
                self.run(node, [f"{self.exec}/libexec/pbs_init.d", "stop"], timeout=120, check=False)
            except subprocess.SubprocessError:
                pass
        self.started = []
        for space in self.spaces.values():
            space.close()
        self.spaces = {}
        for node in self.nodes:
            home = self.home(node)
            if home.is_dir():
                logs = self.folder / "logs" / node
                for name in ("server_logs", "mom_logs", "sched_logs", "comm_logs"):
                    if (home / name).is_dir():
                        shutil.copytree(home / name, logs / name, dirs_exist_ok=True)
                shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`build`: build OpenPBS into the cache (.ci/run does, before `make test`). `up FOLDER`: start a cluster in
    FOLDER and keep it until Ctrl-C or SIGTERM (to try things by hand: put FOLDER/bin first on PATH)."""
    found = tarball()
    if argv == ["build"]:
        if found is None:
            print(f"no OpenPBS source in {TARBALLS}: the real-PBS tests will be skipped", file=sys.stderr)
            return 0
        built, reason = build(found)
        print(built if built else f"warning: {reason}; the real-PBS tests will be skipped",
              file=sys.stdout if built else sys.stderr)
        return 0
    if len(argv) == 2 and argv[0] == "up":
        cluster = PBSCluster(Path(argv[1]).resolve())
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        why = cluster.start()
        if why:
            print(why, file=sys.stderr)
            return 1
        print(f"PBS is up: PATH={cluster.bin}:$PATH qstat -B; Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
