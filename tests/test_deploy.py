"""Deployment: fedsim on Flower's Deployment Engine (SuperLink, SuperNodes, ``flwr run``).

Fast tests check the helpers (certificates, keys, commands, the connection file) and the
server's deployment logic (waiting for nodes, rediscovery, missing replies) on fakes.
Tests marked ``deploy`` start real processes (``make slow``); every process is stopped by
its PID (process group) in ``finally``, also when the test fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_util import FEDSIM, Cluster, cluster, dump_logs, free_port, run_record, wait_for
from flwr.app import Message, RecordDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsim import deploy
from fedsim.algorithms.payloads import Identity

# ----------------------------------------------------------------------------- helpers


def test_certs_are_a_ca_and_a_server_cert_naming_the_hosts(tmp_path: Path) -> None:
    from cryptography import x509

    paths = deploy.make_certs(tmp_path, ["10.9.8.7", "link.example"])

    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example" in sans.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "10.9.8.7"} <= ips
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(paths["cert"], paths["key"])  # the key matches the certificate
    assert paths["key"].stat().st_mode & 0o077 == 0


def test_node_keys_load_the_way_flower_loads_them(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    private, public = deploy.make_node_keys(tmp_path, "node0")

    assert try_load_public_key(public)  # what `flwr supernode register` uploads
    assert load_ssh_private_key(private.read_bytes(), password=None)  # --auth-supernode-...


def test_commands_are_the_documented_flower_commands(tmp_path: Path) -> None:
    link = deploy.superlink_command(tmp_path, port=9000, auth=True)
    node = deploy.supernode_command("10.0.0.1:9000", 2, 3, tmp_path / "ca.crt")
    run = deploy.run_command(["rounds=2", "scenario.num_clients=3"])

    assert link[0] == "flower-superlink" and "--insecure" not in link
    assert link[link.index("--ssl-certfile") + 1] == str(tmp_path / "server.pem")
    assert "--enable-supernode-auth" in link
    assert node[node.index("--node-config") + 1] == "partition-id=2 num-partitions=3"
    assert node[node.index("--port") + 1] == str(deploy.CLIENTAPPIO_PORT + 2)
    assert node[node.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert run[:2] == ["flwr", "run"] and run[3] == deploy.CONNECTION
    assert run[-1] == "overrides='rounds=2 scenario.num_clients=3'"
    assert "--insecure" in deploy.superlink_command(None)
    with pytest.raises(ValueError, match="single quotes"):
        deploy.run_command(["tag='x'"])


def test_connection_is_written_for_flwr_and_keeps_other_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink.other]\naddress = "1.2.3.4:8000"\n')
    ca = tmp_path / "ca.crt"
    ca.write_text("x")

    deploy.write_connection("10.0.0.1:8000", ca)
    conn = read_superlink_connection()  # the default connection, as `flwr run` reads it

    assert conn.address == "10.0.0.1:8000"
    assert conn.root_certificates == str(ca)
    assert read_superlink_connection("other").address == "1.2.3.4:8000"


def test_cli_dry_run_prints_the_flower_command(tmp_path: Path) -> None:
    deploy.make_certs(tmp_path / "certs")
    res = subprocess.run(
        [
            *FEDSIM,
            "supernode",
            "--superlink",
            "h:8000",
            "--partition-id",
            "1",
            "--num-partitions",
            "4",
            "--ca",
            str(tmp_path / "certs" / "ca.crt"),
        ],
        env={**Cluster(tmp_path).env, "FEDSIM_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "flower-supernode --superlink h:8000 --root-certificates" in res.stderr
    assert "'partition-id=1 num-partitions=4'" in res.stderr


# ----------------------------------------------------------------------------- server side


class FakeGrid:
    """Nodes answer queries with their partition; ``late`` nodes connect on a later call."""

    def __init__(self, nodes: dict[int, int], late: dict[int, int] | None = None) -> None:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1  # as the SuperLink sets for a ServerApp
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.nodes = dict(nodes)  # node id -> partition id
        self.late = dict(late or {})
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        if self.calls >= 3:
            self.nodes.update(self.late)
        return list(self.nodes)

    def send_and_receive(self, msgs: Iterable[Message], *, timeout: float) -> list[Message]:
        out = []
        for m in msgs:
            reply = Message(Identity(self.nodes[m.metadata.dst_node_id]).to_record(), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            out.append(reply)
        return out


@pytest.fixture
def quick_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsim.engine import nodes

    monkeypatch.setattr(nodes, "NODE_WAIT_POLL_S", 0.0)


def test_discovery_waits_for_nodes_that_connect_late(quick_wait: None) -> None:
    from fedsim.engine.nodes import discover_nodes

    grid = FakeGrid({101: 0}, late={102: 1, 103: 2})
    node_of = discover_nodes(grid, 3, timeout=5.0)  # type: ignore[arg-type]
    assert node_of == {0: 101, 1: 102, 2: 103}


def test_discovery_gives_up_below_min_clients(quick_wait: None) -> None:
    from fedsim.engine.nodes import discover_nodes
    from fedsim.errors import RunFailed

    grid = FakeGrid({101: 0})
    assert discover_nodes(grid, 3, timeout=0.01, min_clients=1) == {0: 101}  # type: ignore[arg-type]
    with pytest.raises(RunFailed, match="only 1 of 3 clients"):  # one line, exit 1
        discover_nodes(grid, 3, timeout=0.01, min_clients=2)  # type: ignore[arg-type]


def test_a_restarted_node_replaces_its_partitions_old_node_id() -> None:
    from fedsim.engine.nodes import rediscover_nodes

    grid = FakeGrid({101: 0, 103: 2, 204: 1})  # partition 1 came back as node 204
    node_of = {0: 101, 1: 102, 2: 103}
    rediscover_nodes(grid, node_of, timeout=1.0)  # type: ignore[arg-type]
    assert node_of == {0: 101, 1: 204, 2: 103}


def test_replies_missing_after_the_timeout_count_as_failed(fast_cfg: Any) -> None:
    from fedsim.engine.app import CONFIG_KEY, make_client_app
    from fedsim.engine.conf import to_json
    from fedsim.engine.runtime.inline import InlineGrid
    from fedsim.engine.server import run_dir_for, run_experiment

    class LossyGrid(InlineGrid):
        """Client 0 never answers a training message (as a killed SuperNode)."""

        def send_and_receive(
            self, messages: Iterable[Message], *, timeout: float | None = None
        ) -> list[Message]:
            replies = list(super().send_and_receive(messages, timeout=timeout))
            return [
                r
                for r in replies
                if not (r.metadata.src_node_id == 1000 and "train" in str(r.metadata.message_type))
            ]

    cfg = fast_cfg("rounds=1", "scenario.num_clients=3", "backbone=logreg", "train.local_steps=1")
    grid = LossyGrid(make_client_app(), 3, {CONFIG_KEY: to_json(cfg)})
    final = run_experiment(grid, cfg, run_dir_for(cfg))
    assert final["sys/failed_clients"] == 1.0
    assert final["sys/aggregated_clients"] == 2.0


def test_polling_grid_stops_pulling_when_every_reply_is_in() -> None:
    class Inner:
        def __init__(self) -> None:
            self.pulls = 0

        def push_messages(self, msgs: Iterable[Message]) -> list[str]:
            return ["a", "b"]

        def pull_messages(self, ids: Iterable[str]) -> list[Message]:
            self.pulls += 1
            got = []
            for i in sorted(ids)[: 1 if self.pulls < 3 else 2]:
                m = Message(RecordDict(), dst_node_id=1, message_type="query")
                m.metadata.__dict__["_reply_to_message_id"] = i
                got.append(m)
            return got

    inner = Inner()
    grid = deploy.PollingGrid(inner, interval=0.0)  # type: ignore[arg-type]
    replies = grid.send_and_receive([], timeout=10)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert inner.pulls == 2


def test_only_flowers_deployment_grid_is_wrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from flwr.superlink.grid.http_grid import HttpGrid

    from fedsim.engine.grid import PollingGrid, for_grid, wrap_grid

    other = object()
    with for_grid(other, tmp_path / "rel") as (grid, run_dir):  # type: ignore[arg-type]
        assert grid is other and run_dir == tmp_path / "rel"
    assert not (tmp_path / "rel").exists()  # nothing created off the Deployment Engine

    http = object.__new__(HttpGrid)  # the class is what counts, not a connection
    monkeypatch.chdir(tmp_path)
    with for_grid(http, Path("runs/x")) as (grid, run_dir):
        assert isinstance(grid, PollingGrid) and grid.grid is http
        assert run_dir == tmp_path / "runs" / "x"
        logging.getLogger("fedsim.test").info("into the run's log")
    assert "into the run's log" in (tmp_path / "runs" / "x" / "fedsim.log").read_text()
    monkeypatch.setenv("FEDSIM_GRID_POLL_S", "0")  # 0 keeps Flower's own pulls
    assert wrap_grid(http) is http


# ----------------------------------------------------------------------------- real processes

SMALL = [
    "scenario.num_clients=3",
    "backbone.width=0.25",
    "progress=false",
    "runtime.threads=1",  # bit-comparable local training in every runtime
    "rounds=2",
]
RUN_DIR = ("digits_iid", "fedavg", "seed-0")


def _start_superlink(c: Cluster, certs: Path, port: int, *extra: str, **kw: Any) -> None:
    c.start(
        "superlink",
        [*FEDSIM, "superlink", "--certs", str(certs), "--port", str(port), *extra],
        **kw,
    )
    if not kw.get("prefix"):  # on a loaded machine the SuperLink takes a while to listen
        wait_for(lambda: _listening(port), 120, f"the SuperLink to listen on port {port}")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_node(
    c: Cluster, link: str, i: int, n: int, certs: Path, *extra: str, name: str = "", **kw: Any
) -> None:
    cmd = [*FEDSIM, "supernode", "--superlink", link, "--partition-id", str(i)]
    cmd += ["--num-partitions", str(n), "--ca", str(certs / "ca.crt"), "--port", str(free_port())]
    c.start(name or f"node{i}", [*cmd, *extra], **kw)


def _submit(c: Cluster, link: str, certs: Path, overrides: list[str], **kw: Any) -> None:
    cmd = [*FEDSIM, "run", "--superlink", link, "--ca", str(certs / "ca.crt"), *overrides]
    res = c.run([*kw.get("prefix", []), *cmd])
    assert res.returncode == 0, res.stdout + res.stderr + dump_logs(c)


def _wait_run(c: Cluster, run_dir: Path, timeout: float) -> dict[str, Any]:
    try:
        wait_for(
            lambda: (run_record(run_dir) or {}).get("status") in ("complete", "failed"),
            timeout,
            f"run.json in {run_dir} to say complete",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{dump_logs(c)}") from None
    record = run_record(run_dir)
    assert record is not None and record["status"] == "complete", dump_logs(c)
    return record


def _rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _tags(run_dir: Path) -> set[str]:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return set(ea.Tags()["scalars"])


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    deploy.make_certs(tmp_path / "certs", ["10.77.0.1"])
    return tmp_path / "certs"


@pytest.mark.slow
@pytest.mark.deploy
def test_loopback_tls_three_supernodes_match_the_simulated_twin(
    tmp_path: Path, certs: Path
) -> None:
    """Plain flower-superlink / flower-supernode (Flower's default path), TLS on."""
    from fedsim.engine.conf import compose
    from fedsim.engine.runner import execute

    sim = Path(execute(compose([*SMALL, f"output_dir={tmp_path}/sim"]))["run_dir"])
    with cluster(tmp_path) as c:
        port = free_port()
        link = f"127.0.0.1:{port}"
        _start_superlink(c, certs, port)
        for i in range(3):
            _start_node(c, link, i, 3, certs)
        _submit(c, link, certs, [*SMALL, f"output_dir={tmp_path}/dep", "runtime.timeout=300"])
        dep = tmp_path.joinpath("dep", *RUN_DIR)
        _wait_run(c, dep, 900)
        assert "--insecure" not in (c.logs / "superlink.log").read_text()

    a, b = _rows(sim), _rows(dep)
    assert [r["round"] for r in b] == [1, 2]
    assert set(a[-1]) == set(b[-1])  # the same metrics, including sys/failed_clients
    assert _tags(sim) == _tags(dep)  # the same TensorBoard scalars
    for key in ["eval/acc", "eval/global_acc", "train/loss", "eval/loss", "comm/bytes_up"]:
        assert b[-1][key] == pytest.approx(a[-1][key], rel=1e-6, abs=1e-9), key
    assert b[-1]["sys/failed_clients"] == 0.0
    assert (dep / "fedsim.log").exists()


@pytest.mark.slow
@pytest.mark.deploy
def test_supernode_auth_refuses_unregistered_nodes(tmp_path: Path, certs: Path) -> None:
    keys = tmp_path / "keys"
    with cluster(tmp_path) as c:
        port = free_port()
        link = f"127.0.0.1:{port}"
        _start_superlink(c, certs, port, "--auth")
        res = c.run([*FEDSIM, "connect", "--superlink", link, "--ca", str(certs / "ca.crt")])
        assert res.returncode == 0, res.stderr
        for i in range(3):
            deploy.make_node_keys(keys, f"node{i}")
        for i in range(2):  # node2 is never registered
            res = wait_for(
                lambda i=i: (
                    r
                    if (r := c.run([*FEDSIM, "register", str(keys / f"node{i}.pub")])).returncode
                    == 0
                    else None
                ),
                60,
                "flwr supernode register to succeed",
                every=2,
            )
            assert "registered successfully" in res.stdout, res.stdout + res.stderr
        for i in range(3):
            _start_node(c, link, i, 3, certs, "--key", str(keys / f"node{i}"), "--fast")

        wait_for(lambda: not c.alive("node2"), 120, "the unregistered SuperNode to be refused")
        assert c.procs["node2"].returncode != 0
        assert "Failed to initialize the connection" in c.log("node2"), c.log("node2")

        out = [*SMALL, "rounds=1", "scenario.num_clients=2", f"output_dir={tmp_path}/auth"]
        _submit(c, link, certs, [*out, "runtime.timeout=120"])
        run_dir = tmp_path.joinpath("auth", *RUN_DIR)
        _wait_run(c, run_dir, 600)
        assert c.alive("node0") and c.alive("node1")
    assert _rows(run_dir)[-1]["sys/aggregated_clients"] == 2.0


@pytest.mark.slow
@pytest.mark.deploy
def test_killed_supernode_is_counted_and_a_restarted_one_rejoins(
    tmp_path: Path, certs: Path
) -> None:
    with cluster(tmp_path) as c:
        port = free_port()
        link = f"127.0.0.1:{port}"
        _start_superlink(c, certs, port)
        for i in range(3):
            _start_node(c, link, i, 3, certs, "--fast")
        overrides = [
            *SMALL,
            "rounds=5",
            "scenario.participation.min_clients=2",
            "runtime.timeout=60",  # a dead node costs one timeout per phase
            f"output_dir={tmp_path}/faults",
        ]
        _submit(c, link, certs, overrides)
        run_dir = tmp_path.joinpath("faults", *RUN_DIR)
        jsonl = run_dir / "metrics.jsonl"
        wait_for(lambda: jsonl.exists() and _rows(run_dir), 600, "round 1", every=1)
        c.kill("node2", signal.SIGKILL)  # mid-run: no goodbye to the SuperLink
        killed_after = len(_rows(run_dir))
        wait_for(
            lambda: any(r["sys/failed_clients"] > 0 for r in _rows(run_dir)[killed_after:]),
            600,
            "a round that counts the killed SuperNode",
            every=1,
        )
        _start_node(c, link, 2, 3, certs, "--fast", name="node2-restarted")
        record = _wait_run(c, run_dir, 1200)

    rows = _rows(run_dir)
    assert record["status"] == "complete" and len(rows) == 5
    hit = next(r for r in rows[killed_after:] if r["sys/failed_clients"] > 0)
    assert hit["sys/aggregated_clients"] >= 2.0  # the round completed without it
    assert any(r["sys/aggregated_clients"] == 3.0 for r in rows if r["round"] > hit["round"]), (
        "the restarted SuperNode never trained again",
        rows,
    )
    assert "sys/failed_clients" in _tags(run_dir)
    assert "rediscovered nodes" in (run_dir / "fedsim.log").read_text()


@pytest.mark.slow
@pytest.mark.deploy
def test_resnet18_crosses_the_wire(tmp_path: Path, certs: Path) -> None:
    with cluster(tmp_path) as c:
        port = free_port()
        link = f"127.0.0.1:{port}"
        _start_superlink(c, certs, port)
        for i in range(2):
            _start_node(c, link, i, 2, certs, "--fast")
        overrides = [
            "backbone=resnet18",
            "scenario.num_clients=2",
            "rounds=1",
            "train.local_steps=1",
            "progress=false",
            "runtime.timeout=600",
            f"output_dir={tmp_path}/resnet",
        ]
        _submit(c, link, certs, overrides)
        run_dir = tmp_path.joinpath("resnet", *RUN_DIR)
        _wait_run(c, run_dir, 900)
    row = _rows(run_dir)[-1]
    assert row["sys/aggregated_clients"] == 2.0 and row["sys/failed_clients"] == 0.0
    assert row["comm/bytes_up"] > 2 * 40e6  # two ~45 MB models came back


# ----------------------------------------------------------------------------- namespaces


@pytest.fixture
def netns() -> Iterator[dict[str, Any]]:
    """One namespace for the SuperLink and one per SuperNode, joined by veth pairs.

    The SuperLink's namespace holds a bridge (10.77.0.1/24); each SuperNode namespace
    gets one end of a veth pair (10.77.0.1x/24), the other end on the bridge.
    """
    import os

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    tag = uuid.uuid4().hex[:6]
    link_ns, nodes = f"fsl{tag}", [f"fsn{tag}{i}" for i in range(3)]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    made: list[str] = []
    try:
        for ns in [link_ns, *nodes]:
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", link_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", link_ns, "addr", "add", "10.77.0.1/24", "dev", "br0")
        ip("-n", link_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(nodes):
            ip("link", "add", f"v{tag}{i}a", "type", "veth", "peer", "name", f"v{tag}{i}b")
            ip("link", "set", f"v{tag}{i}a", "netns", link_ns)
            ip("link", "set", f"v{tag}{i}b", "netns", ns)
            ip("-n", link_ns, "link", "set", f"v{tag}{i}a", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"10.77.0.{10 + i}/24", "dev", f"v{tag}{i}b")
            ip("-n", ns, "link", "set", f"v{tag}{i}b", "up")
    except subprocess.CalledProcessError as e:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        pytest.skip(f"cannot build network namespaces here: {e.stderr.strip()}")
    try:
        yield {"link": link_ns, "nodes": nodes, "address": "10.77.0.1"}
    finally:
        for ns in made:  # deleting a namespace removes its veth ends
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.slow
@pytest.mark.deploy
def test_multi_host_in_network_namespaces(
    tmp_path: Path, certs: Path, netns: dict[str, Any]
) -> None:
    def inside(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    port = 8000  # each namespace has its own ports
    link = f"{netns['address']}:{port}"
    with cluster(tmp_path) as c:
        _start_superlink(c, certs, port, prefix=inside(netns["link"]))
        for i, ns in enumerate(netns["nodes"]):
            _start_node(c, link, i, 3, certs, "--fast", prefix=inside(ns))
        # the run is submitted from a SuperNode's host, over the namespaces' network
        overrides = [*SMALL, f"output_dir={tmp_path}/netns", "runtime.timeout=300"]
        _submit(c, link, certs, overrides, prefix=inside(netns["nodes"][0]))
        run_dir = tmp_path.joinpath("netns", *RUN_DIR)
        _wait_run(c, run_dir, 900)
        # nothing listens on loopback of a SuperNode's namespace: it really went over veth
        probe = c.run([*inside(netns["nodes"][1]), "python3", "-c", _PROBE.format(port=port)])
        assert probe.stdout.strip() == "refused", probe.stdout + probe.stderr
    assert _rows(run_dir)[-1]["sys/aggregated_clients"] == 3.0


_PROBE = """
import socket
s = socket.socket()
try:
    s.connect(("127.0.0.1", {port})); print("open")
except OSError:
    print("refused")
"""
