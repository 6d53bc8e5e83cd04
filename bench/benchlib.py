"""What the benchmark scripts share: a Sluice server on a free port, psql,
and the CPU and memory figures of a process read from /proc."""

import os
import socket
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def psql(port, *statements):
    """Runs each statement through psql; the rows of the output, split on |."""
    args = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "sluice", "-X", "-tA", "-v", "ON_ERROR_STOP=1"]
    for s in statements:
        args += ["-c", s]
    out = subprocess.run(args, env=dict(os.environ, PGPASSWORD="sluice"), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def proc_cpu(pid):
    """CPU-seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mib(pid, key):
    """A memory figure of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: now) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def java_child():
    """The JVM PyFlink started (a child of this process)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm == "java":
            return int(d)
    raise RuntimeError("no JVM child found")


class PsqlSession:
    """One psql process on one connection, for polling a server while it is
    measured. A psql per poll (a process start and a SCRAM login, ~50 ms of
    CPU every 20 ms) took most of a core of the two the server under test
    had, and made its figures depend on how the scheduler shared the cores."""

    END = "__sluice_bench_end__"

    def __init__(self, port):
        self.proc = subprocess.Popen(
            ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "sluice", "-X", "-tA", "-q"],
            env=dict(os.environ, PGPASSWORD="sluice"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)

    def sql(self, statement):
        """The rows of one statement, split on |."""
        self.proc.stdin.write(statement.rstrip().rstrip(";") + ";\n\\echo " + self.END + "\n")
        self.proc.stdin.flush()
        rows = []
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line == self.END:
                return rows
            if line:
                rows.append(line.split("|"))
        raise RuntimeError(f"psql ended (exit {self.proc.wait()}) running: {statement}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def wait_job(session, name):
    """Waits, polling `session` (a PsqlSession), for a job to end; its status."""
    while True:
        status = {r[2] for r in session.sql("SHOW JOBS") if r[0] == name}
        if not status:
            raise RuntimeError(f"no job named {name} (did its statement fail?)")
        if status & {"finished", "failed"}:
            return "failed" if "failed" in status else "finished"
        time.sleep(0.02)


class Sluice:
    """A fresh Sluice server in a temporary data directory, for one `with`.

    `prepare(data_dir)` runs before the server starts (to place files in its
    data directory)."""

    def __init__(self, binary, file_roots, parallelism=2, prepare=None, http=False):
        self.binary, self.roots, self.parallelism, self.prepare = binary, file_roots, parallelism, prepare
        # With `http`, the console and /metrics listen on `self.http_port`.
        self.http_port = free_port() if http else None

    def __enter__(self):
        self.data = tempfile.TemporaryDirectory()
        if self.prepare:
            self.prepare(self.data.name)
        self.port = free_port()
        env = dict(os.environ, SLUICE_LOG="warn", SLUICE_CHECKPOINT_INTERVAL="10s",
                   SLUICE_PARALLELISM=str(self.parallelism), SLUICE_FILE_ROOTS=self.roots)
        http = f"127.0.0.1:{self.http_port}" if self.http_port else "off"
        self.proc = subprocess.Popen([self.binary, "--listen", f"127.0.0.1:{self.port}", "--http-listen", http,
                                      "--data-dir", self.data.name],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.__exit__(None, None, None)
                    raise RuntimeError("sluice did not start")
                time.sleep(0.02)

    def __exit__(self, *_):
        self.proc.terminate()
        self.proc.wait()
        self.data.cleanup()

    def sql(self, *statements):
        return psql(self.port, *statements)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def peak_mib(self):
        return proc_mem_mib(self.proc.pid, "VmHWM")

    def wait_job(self, name):
        """Waits for a job to end; its status."""
        session = PsqlSession(self.port)
        try:
            return wait_job(session, name)
        finally:
            session.close()

    def source_rows(self, name):
        """Rows out of a job's source operators (SHOW JOBS)."""
        return sum(n for _, n in self.sources(name))

    def sources(self, name):
        """(stream, rows out) of each source operator of a job (SHOW JOBS)."""
        return [(r[4].removeprefix("Source: "), int(r[7])) for r in self.sql("SHOW JOBS")
                if r[0] == name and r[4].startswith("Source:")]
