"""Throwaway ClickHouse servers for the tests and for .ci/run: stdlib only.

Each server runs from a temporary directory holding its config, data and logs,
listens on 127.0.0.1 only (native TCP and HTTP ports picked free), and is
killed and its directory removed on :meth:`ThrowawayClickHouse.stop`. Every
server of a :func:`start_servers` group has the ``leza_shards`` cluster in its
``<remote_servers>``: one shard per server of the group, no replication.

The config is written for both Debian 12's ``clickhouse-server`` (18.16) and
current releases (which still read a ``<yandex>`` root).

As a script (.ci/run): ``python3 tests/clickhouse_server.py URLS_FILE`` starts
two servers, writes their URLs to ``URLS_FILE`` (one a line) and stops them on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

__all__ = ["CLUSTER", "DATABASE", "ThrowawayClickHouse", "find_server", "start_servers"]

#: The cluster every server of a group knows (for Distributed tables).
CLUSTER = "leza_shards"
#: The database the URLs name (created at start).
DATABASE = "leza_test"


def find_server() -> list[str] | None:
    """The command that runs a ClickHouse server: ``$LEZA_TEST_CLICKHOUSE_SERVER``
    when set, else Debian's ``clickhouse-server``
    (in /usr/sbin, often not on a user's PATH), or the single ``clickhouse``
    binary of current releases (``clickhouse server``); None when neither exists."""
    explicit = os.environ.get("LEZA_TEST_CLICKHOUSE_SERVER")
    if explicit:  # that binary, or none
        return [explicit] if os.access(explicit, os.X_OK) else None
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin:/usr/bin"
    found = shutil.which("clickhouse-server", path=path)
    if found:
        return [found]
    single = shutil.which("clickhouse", path=path)
    if single:
        return [single, "server"]
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # all bound at once: n distinct ports
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _config(root: Path, tcp_port: int, http_port: int, shards: list[int]) -> str:
    r = escape(str(root))
    shard_xml = "".join(
        f"<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>" for p in shards
    )
    return f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{r}/server.log</log>
        <errorlog>{r}/server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{r}/data/</path>
    <tmp_path>{r}/tmp/</tmp_path>
    <user_files_path>{r}/user_files/</user_files_path>
    <format_schema_path>{r}/format_schemas/</format_schema_path>
    <users_config>{r}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <remote_servers>
        <{CLUSTER}>{shard_xml}</{CLUSTER}>
    </remote_servers>
</yandex>
"""


_USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
"""


class ThrowawayClickHouse:
    """One ClickHouse server in a temporary directory (see the module docstring)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.root = Path(tempfile.mkdtemp(prefix="leza-test-ch-"))
        self.tcp_port = 0
        self.http_port = 0
        self.shards: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"clickhouse://127.0.0.1:{self.tcp_port}/{DATABASE}"

    def launch(self, tcp_port: int, http_port: int, shards: list[int]) -> None:
        """Write the config and start the server (not waiting for it)."""
        self.tcp_port, self.http_port, self.shards = tcp_port, http_port, shards
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "users.xml").write_text(_USERS)
        config = self.root / "config.xml"
        config.write_text(_config(self.root, tcp_port, http_port, shards))
        out = (self.root / "stdout.log").open("wb")
        self.proc = subprocess.Popen(
            [*self.command, f"--config-file={config}"],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run is not sent to it too
        )
        out.close()

    def _query(self, sql: str, timeout: float = 5.0) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/", data=sql.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.read().decode())

    def wait_ready(self, deadline: float) -> None:
        """Until the server answers a query (then create the test database);
        RuntimeError with its log when it exits or the deadline passes."""
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"clickhouse-server exited with {self.proc.returncode}{self.log_tail()}"
                )
            try:
                self._query(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"clickhouse-server did not answer on port {self.http_port}"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def version(self) -> str:
        return self._query("SELECT version()").strip()

    def log_tail(self) -> str:
        parts = []
        for name in ("stdout.log", "server.err.log"):
            try:
                text = (self.root / name).read_text(errors="replace")[-3000:]
            except OSError:
                continue
            parts.append(f"\n{name}:\n{text}")
        return "".join(parts)

    def kill(self) -> None:
        """Kill the server at once (a crashed shard); its data stays for :meth:`restart`."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: a hung server. The kernel still accepts connections into the
        listen backlog, but nothing answers (a network black hole looks the same
        to a client)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the hung server goes on where it stopped."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def set_shards(self, shards: list[int]) -> None:
        """Rewrite the ``leza_shards`` cluster of this server's config (the
        server reads it again within seconds, no restart)."""
        self.shards = shards
        config = self.root / "config.xml"
        tmp = self.root / "config.xml.tmp"
        tmp.write_text(_config(self.root, self.tcp_port, self.http_port, shards))
        os.replace(tmp, config)

    def cluster_size(self) -> int:
        return int(self._query(f"SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER}'"))

    def restart(self, timeout: float = 60.0) -> None:
        """Start it again on the same ports and data, and wait until it answers."""
        self.launch(self.tcp_port, self.http_port, self.shards)
        self.wait_ready(time.monotonic() + timeout)

    def stop(self) -> None:
        """Kill the server (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.resume()  # a stopped process would not see SIGTERM
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self.proc = None
            shutil.rmtree(self.root, ignore_errors=True)


def start_servers(
    command: list[str], n: int = 2, timeout: float = 60.0, shards: int | None = None
) -> list[ThrowawayClickHouse]:
    """``n`` servers started side by side, each knowing the ``leza_shards``
    cluster of all ``n`` (of the first ``shards`` when given: the others are
    spare, to be added with :meth:`ThrowawayClickHouse.set_shards`). Retried on
    new ports when one fails to start (a free port can be taken before the
    server binds it); every server is stopped if this raises."""
    last: Exception | None = None
    for _attempt in range(3):
        servers = [ThrowawayClickHouse(command) for _ in range(n)]
        try:
            ports = _free_ports(2 * n)
            tcp = ports[:n]
            for i, server in enumerate(servers):
                server.launch(tcp[i], ports[n + i], tcp[: n if shards is None else shards])
            deadline = time.monotonic() + timeout
            for server in servers:
                server.wait_ready(deadline)
            return servers
        except (OSError, RuntimeError) as exc:
            last = exc
            for server in servers:
                server.stop()
    raise RuntimeError(f"could not start {n} ClickHouse servers: {last}")


def _main(urls_file: str) -> int:
    command = find_server()
    if command is None:
        print("no clickhouse-server binary found", file=sys.stderr)
        return 1
    servers = start_servers(command)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        tmp = urls_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(s.url + "\n" for s in servers))
        os.replace(tmp, urls_file)  # whole or absent: .ci/run waits for it
        print(f"ClickHouse {servers[0].version()}: " + " ".join(s.url for s in servers))
        sys.stdout.flush()
        while not stop and all(s.proc is not None and s.proc.poll() is None for s in servers):
            time.sleep(0.2)
        return 0 if stop else 1
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
