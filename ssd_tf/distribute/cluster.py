"""Which workers take part in a run, and which one this process is.

`resolve_cluster` looks at these sources in order; the first one present wins:

1. the `TF_CONFIG` environment variable (JSON: cluster.worker [+ cluster.chief], task.type, task.index);
2. `worker_hosts` ("host:port,host:port") with `task_index`;
3. an Ascend rank table (`rank_table_file`) with this process's rank from `rank_id` or the `RANK_ID` variable;
   both formats: `group_list` / `instance_list` and `server_list` / `device`. Each rank is one worker on the
   host the table names (127.0.0.1 for single-server tables whose server id is 0.0.0.0), port base_port + rank;
4. SLURM's environment (SLURM_PROCID, SLURM_NTASKS, SLURM_STEP_NODELIST or SLURM_JOB_NODELIST, tasks per node);
   port base_port + local task id.

No source -> None (a single process). This module does not import TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Mapping

__all__ = ["ClusterConfigError", "RankDevice", "Cluster", "resolve_cluster", "cluster_to_tf_config",
           "apply_tf_config", "parse_rank_table", "load_rank_table", "write_local_rank_table",
           "expand_hostlist", "expand_tasks_per_node", "DEFAULT_BASE_PORT"]

DEFAULT_BASE_PORT = 29500
LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"


class ClusterConfigError(ValueError):
    """A cluster description (TF_CONFIG, flags, rank table, SLURM variables) is missing or inconsistent."""


@dataclasses.dataclass(frozen=True)
class RankDevice:
    """One rank's accelerator as a rank table describes it."""
    rank_id: int
    server_id: str
    device_id: str
    device_ip: str | None = None


@dataclasses.dataclass(frozen=True)
class Cluster:
    """workers[i] = "host:port" of worker i; this process is workers[task_index] (worker 0 is the chief)."""
    workers: tuple[str, ...]
    task_index: int
    source: str
    devices: tuple[RankDevice, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "workers", tuple(self.workers))
        if not self.workers:
            raise ClusterConfigError(f"{self.source}: the worker list is empty")
        for w in self.workers:
            _check_host_port(w, self.source)
        dupes = sorted({w for w in self.workers if self.workers.count(w) > 1})
        if dupes:
            raise ClusterConfigError(f"{self.source}: duplicate worker addresses {dupes}")
        if not 0 <= self.task_index < len(self.workers):
            raise ClusterConfigError(
                f"{self.source}: task index {self.task_index} out of range for {len(self.workers)} workers")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(self.devices))

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.task_index == 0

    @property
    def device(self) -> RankDevice | None:
        """This process's device from the rank table, if the cluster came from one."""
        return None if self.devices is None else self.devices[self.task_index]


# ----------------------------------------------------------------------------------------------- helpers
def _check_host_port(address: str, where: str) -> None:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterConfigError(f"{where}: worker address {address!r} is not host:port with a port in 1..65535")


def _as_int(value, field: str, where: str) -> int:
    """Rank tables write numbers as strings ("8"); accept those and ints, nothing else."""
    if isinstance(value, bool):
        raise ClusterConfigError(f"{where}: {field} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ClusterConfigError(f"{where}: {field} must be an integer, got {value!r}")


def _require(mapping, key: str, where: str, kind=None):
    if not isinstance(mapping, dict):
        raise ClusterConfigError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise ClusterConfigError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if kind is not None and not isinstance(value, kind):
        raise ClusterConfigError(f"{where}: {key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _rank_from(value, field: str, num_ranks: int) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"\s*[+-]?\d+\s*", str(value))):
        raise ClusterConfigError(f"{field} must be an integer rank in 0..{num_ranks - 1}, got {value!r}")
    rank = int(value)
    if not 0 <= rank < num_ranks:
        raise ClusterConfigError(f"{field}={rank} is out of range: the rank table has {num_ranks} ranks (0..{num_ranks - 1})")
    return rank


# ------------------------------------------------------------------------------------------- TF_CONFIG
def _from_tf_config(text: str) -> Cluster:
    where = "TF_CONFIG"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(f"{where} is not valid JSON: {e}") from None
    cluster = _require(config, "cluster", where, dict)
    task = _require(config, "task", where, dict)
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise ClusterConfigError(f"{where}: cluster.{unknown[0]} is not supported (only chief and worker; "
                                 "parameter servers and evaluators are not used by this trainer)")
    chief = cluster.get("chief", [])
    workers = cluster.get("worker", [])
    for name, hosts in (("chief", chief), ("worker", workers)):
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ClusterConfigError(f"{where}: cluster.{name} must be a list of 'host:port' strings")
    if len(chief) > 1:
        raise ClusterConfigError(f"{where}: cluster.chief must have at most one entry, got {len(chief)}")
    if not chief and not workers:
        raise ClusterConfigError(f"{where}: cluster.worker is empty")
    task_type = _require(task, "type", f"{where} task")
    if task_type not in ("chief", "worker") or task_type not in cluster:
        raise ClusterConfigError(f"{where}: task.type {task_type!r} is not one of the cluster's job names "
                                 f"{sorted(cluster)}")
    index = _as_int(_require(task, "index", f"{where} task"), "task.index", where)
    group = chief if task_type == "chief" else workers
    if not 0 <= index < len(group):
        raise ClusterConfigError(f"{where}: task.index {index} out of range for cluster.{task_type} "
                                 f"with {len(group)} entries")
    # The chief (if any) becomes worker 0: MultiWorkerMirroredStrategy treats both layouts the same.
    global_index = index if task_type == "chief" else len(chief) + index
    return Cluster(tuple(chief) + tuple(workers), global_index, "TF_CONFIG")


# --------------------------------------------------------------------------------------- worker hosts
def _from_worker_hosts(worker_hosts, task_index) -> Cluster:
    where = "--worker_hosts"
    hosts = [h.strip() for h in worker_hosts.split(",")] if isinstance(worker_hosts, str) else list(worker_hosts)
    if not hosts or any(not h for h in hosts):
        raise ClusterConfigError(f"{where}: empty entry in {worker_hosts!r}")
    if task_index is None:
        raise ClusterConfigError(f"{where} needs --task_index (0..{len(hosts) - 1})")
    index = _as_int(task_index, "--task_index", where)
    if not 0 <= index < len(hosts):
        raise ClusterConfigError(f"--task_index={index} out of range for {len(hosts)} worker hosts")
    return Cluster(tuple(hosts), index, "worker_hosts")


# ----------------------------------------------------------------------------------------- rank tables
def _check_rank_ids(devices: list[RankDevice], where: str) -> list[RankDevice]:
    seen = {}
    for d in devices:
        if d.rank_id in seen:
            raise ClusterConfigError(f"{where}: duplicate rank_id {d.rank_id} (servers {seen[d.rank_id]!r} and "
                                     f"{d.server_id!r})")
        seen[d.rank_id] = d.server_id
    missing = sorted(set(range(len(devices))) - set(seen))
    if missing:
        raise ClusterConfigError(f"{where}: rank_id values must be 0..{len(devices) - 1}; missing {missing}, "
                                 f"got {sorted(seen)}")
    return sorted(devices, key=lambda d: d.rank_id)


def _parse_group_list(table: dict, where: str) -> list[RankDevice]:
    groups = _require(table, "group_list", where, list)
    if "group_count" in table and _as_int(table["group_count"], "group_count", where) != len(groups):
        raise ClusterConfigError(f"{where}: group_count is {table['group_count']} but group_list has "
                                 f"{len(groups)} entries")
    devices = []
    for g, group in enumerate(groups):
        gwhere = f"{where} group_list[{g}]"
        instances = _require(group, "instance_list", gwhere, list)
        if "instance_count" in group and _as_int(group["instance_count"], "instance_count", gwhere) != len(instances):
            raise ClusterConfigError(f"{gwhere}: instance_count is {group['instance_count']} but instance_list "
                                     f"has {len(instances)} entries")
        group_devices = []
        for i, inst in enumerate(instances):
            iwhere = f"{gwhere} instance_list[{i}]"
            rank = _as_int(_require(inst, "rank_id", iwhere), "rank_id", iwhere)
            server = str(_require(inst, "server_id", iwhere))
            devs = _require(inst, "devices", iwhere, list)
            if len(devs) != 1:
                raise ClusterConfigError(f"{iwhere}: devices must list exactly one device per rank, got {len(devs)}")
            dev = devs[0]
            device_id = str(_as_int(_require(dev, "device_id", f"{iwhere} devices[0]"), "device_id", iwhere))
            group_devices.append(RankDevice(rank, server, device_id, dev.get("device_ip")))
        if "device_num" in group and _as_int(group["device_num"], "device_num", gwhere) != len(group_devices):
            raise ClusterConfigError(f"{gwhere}: device_num is {group['device_num']} but the instances list "
                                     f"{len(group_devices)} devices")
        servers = {d.server_id for d in group_devices}
        if "server_num" in group and _as_int(group["server_num"], "server_num", gwhere) != len(servers):
            raise ClusterConfigError(f"{gwhere}: server_num is {group['server_num']} but the instances name "
                                     f"{len(servers)} servers {sorted(servers)}")
        devices.extend(group_devices)
    return devices


def _parse_server_list(table: dict, where: str) -> list[RankDevice]:
    servers = _require(table, "server_list", where, list)
    if "server_count" in table and _as_int(table["server_count"], "server_count", where) != len(servers):
        raise ClusterConfigError(f"{where}: server_count is {table['server_count']} but server_list has "
                                 f"{len(servers)} entries")
    devices = []
    for s, server in enumerate(servers):
        swhere = f"{where} server_list[{s}]"
        server_id = str(_require(server, "server_id", swhere))
        devs = _require(server, "device", swhere, list)
        if not devs:
            raise ClusterConfigError(f"{swhere}: device list is empty")
        for d, dev in enumerate(devs):
            dwhere = f"{swhere} device[{d}]"
            rank = _as_int(_require(dev, "rank_id", dwhere), "rank_id", dwhere)
            device_id = str(_as_int(_require(dev, "device_id", dwhere), "device_id", dwhere))
            devices.append(RankDevice(rank, server_id, device_id, dev.get("device_ip")))
    return devices


def parse_rank_table(table: dict, where: str = "rank table") -> tuple[RankDevice, ...]:
    """Both Ascend formats -> devices sorted by rank id (validated: counts agree, rank ids are 0..N-1)."""
    if not isinstance(table, dict):
        raise ClusterConfigError(f"{where}: expected a JSON object at the top level, got {type(table).__name__}")
    if "status" in table and table["status"] != "completed":
        raise ClusterConfigError(f"{where}: status is {table['status']!r}, not 'completed' (table not ready)")
    if "group_list" in table:
        devices = _parse_group_list(table, where)
    elif "server_list" in table:
        devices = _parse_server_list(table, where)
    else:
        raise ClusterConfigError(f"{where}: neither 'group_list' nor 'server_list' found (keys: {sorted(table)})")
    if not devices:
        raise ClusterConfigError(f"{where}: no ranks listed")
    devices = _check_rank_ids(devices, where)
    device_ids = {}
    for d in devices:
        key = (d.server_id, d.device_id)
        if key in device_ids:
            raise ClusterConfigError(f"{where}: device_id {d.device_id} on server {d.server_id!r} is used by ranks "
                                     f"{device_ids[key]} and {d.rank_id}")
        device_ids[key] = d.rank_id
    return tuple(devices)


def load_rank_table(path: str | os.PathLike) -> tuple[RankDevice, ...]:
    """Read and validate a rank table file (errors name the file)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ClusterConfigError(f"rank table file not found: {path}") from None
    except OSError as e:
        raise ClusterConfigError(f"cannot read rank table file {path}: {e}") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(f"rank table file {path} is not valid JSON: {e}") from None
    return parse_rank_table(table, where=f"rank table {path}")


def _rank_table_hosts(devices, where: str) -> list[str]:
    servers = {d.server_id for d in devices}
    hosts = []
    for d in devices:
        if d.server_id == ANY_ADDRESS:
            if len(servers) > 1:
                raise ClusterConfigError(f"{where}: server_id 0.0.0.0 cannot be addressed in a table with "
                                         f"{len(servers)} servers {sorted(servers)}")
            hosts.append(LOOPBACK)
        else:
            hosts.append(d.server_id)
    return hosts


def _from_rank_table(path, rank_id, environ, base_port) -> Cluster:
    devices = load_rank_table(path)
    if rank_id is not None:
        rank = _rank_from(rank_id, "--rank_id", len(devices))
    elif "RANK_ID" in environ:
        rank = _rank_from(environ["RANK_ID"], "RANK_ID", len(devices))
    else:
        raise ClusterConfigError(f"rank table {path} given but this process's rank is unknown: set RANK_ID or "
                                 "--rank_id")
    hosts = _rank_table_hosts(devices, f"rank table {path}")
    workers = tuple(f"{h}:{base_port + d.rank_id}" for h, d in zip(hosts, devices))
    return Cluster(workers, rank, f"rank_table:{os.fspath(path)}", devices)


def write_local_rank_table(path: str | os.PathLike, num_ranks: int, server_id: str = ANY_ADDRESS) -> dict:
    """Write a group_list-format table for `num_ranks` devices of this host (device_ips are placeholders)."""
    if isinstance(num_ranks, bool) or int(num_ranks) != num_ranks or num_ranks < 1:
        raise ValueError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    num_ranks = int(num_ranks)
    instances = [{"devices": [{"device_id": str(r), "device_ip": f"192.168.{100 + r % 4}.{101 - r // 4 % 2}"}],
                  "rank_id": str(r), "server_id": server_id} for r in range(num_ranks)]
    table = {
        "board_id": "0x0000", "chip_info": "910", "deploy_mode": "lab", "group_count": "1",
        "group_list": [{"device_num": str(num_ranks), "server_num": "1", "group_name": "",
                        "instance_count": str(num_ranks), "instance_list": instances}],
        "para_plane_nic_location": "device", "para_plane_nic_name": [f"eth{r}" for r in range(num_ranks)],
        "para_plane_nic_num": str(num_ranks), "status": "completed",
    }
    parse_rank_table(table, where=f"generated rank table {os.fspath(path)}")
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=2)
    os.replace(tmp, path)
    return table


# ---------------------------------------------------------------------------------------------- SLURM
def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ClusterConfigError(f"hostlist {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ClusterConfigError(f"hostlist {text!r}: unbalanced '['")
    parts.append("".join(current))
    return [p for p in (s.strip() for s in parts) if p]


def _expand_one(item: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", item)
    if not m:
        return [item]
    prefix, suffix = item[:m.start()], item[m.end():]
    values = []
    for part in m.group(1).split(","):
        part = part.strip()
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not bounds:
            raise ClusterConfigError(f"hostlist {whole!r}: bad range {part!r}")
        lo, hi = bounds.group(1), bounds.group(2) or bounds.group(1)
        if int(hi) < int(lo):
            raise ClusterConfigError(f"hostlist {whole!r}: descending range {part!r}")
        width = len(lo) if lo.startswith("0") else 0
        values.extend(str(v).zfill(width) for v in range(int(lo), int(hi) + 1))
    return [host for v in values for host in _expand_one(prefix + v + suffix, whole)]


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM hostlist syntax: "node[01-03,07],gpu5" -> ["node01", "node02", "node03", "node07", "gpu5"]."""
    return [host for item in _split_top_level(hostlist) for host in _expand_one(item, hostlist)]


def expand_tasks_per_node(spec: str) -> list[int]:
    """SLURM tasks-per-node syntax: "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ClusterConfigError(f"SLURM tasks per node {spec!r}: bad entry {part!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def _from_slurm(environ: Mapping[str, str], base_port: int) -> Cluster:
    rank = _as_int(environ["SLURM_PROCID"], "SLURM_PROCID", "SLURM")
    ntasks_var = "SLURM_NTASKS" if "SLURM_NTASKS" in environ else "SLURM_NPROCS"
    if ntasks_var not in environ:
        raise ClusterConfigError("SLURM: SLURM_PROCID is set but SLURM_NTASKS is not")
    ntasks = _as_int(environ[ntasks_var], ntasks_var, "SLURM")
    nodelist_var = next((v for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if environ.get(v)), None)
    if nodelist_var is None:
        raise ClusterConfigError("SLURM: none of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST is set")
    nodes = expand_hostlist(environ[nodelist_var])
    tpn_var = next((v for v in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE") if environ.get(v)), None)
    if tpn_var is not None:
        per_node = expand_tasks_per_node(environ[tpn_var])
        if len(per_node) != len(nodes):
            raise ClusterConfigError(f"SLURM: {tpn_var}={environ[tpn_var]!r} describes {len(per_node)} nodes but "
                                     f"{nodelist_var} lists {len(nodes)}")
    else:
        if ntasks % len(nodes):
            raise ClusterConfigError(f"SLURM: {ntasks} tasks do not divide evenly over {len(nodes)} nodes and "
                                     "SLURM_STEP_TASKS_PER_NODE is not set")
        per_node = [ntasks // len(nodes)] * len(nodes)
    if sum(per_node) != ntasks:
        raise ClusterConfigError(f"SLURM: tasks per node {per_node} sum to {sum(per_node)}, {ntasks_var} is {ntasks}")
    if not 0 <= rank < ntasks:
        raise ClusterConfigError(f"SLURM: SLURM_PROCID={rank} out of range for {ntasks_var}={ntasks}")
    # Block distribution (SLURM's default): ranks fill node 0, then node 1, ...
    workers, local_ids = [], []
    for node, count in zip(nodes, per_node):
        for local in range(count):
            workers.append(f"{node}:{base_port + local}")
            local_ids.append(local)
    if "SLURM_LOCALID" in environ:
        local = _as_int(environ["SLURM_LOCALID"], "SLURM_LOCALID", "SLURM")
        if local != local_ids[rank]:
            raise ClusterConfigError(f"SLURM: SLURM_LOCALID={local} but rank {rank} is local task {local_ids[rank]} "
                                     "under block distribution (use srun --distribution=block)")
    return Cluster(tuple(workers), rank, f"SLURM ({nodelist_var})")


# ----------------------------------------------------------------------------------------------- public
def resolve_cluster(worker_hosts=None, task_index=None, rank_table_file=None, rank_id=None,
                    base_port: int = DEFAULT_BASE_PORT, environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster this process belongs to, from the first source present (see the module docstring)."""
    environ = os.environ if environ is None else environ
    base_port = _as_int(base_port, "base_port", "resolve_cluster")
    if not 0 < base_port < 65536:
        raise ClusterConfigError(f"base_port must be in 1..65535, got {base_port}")
    if environ.get("TF_CONFIG", "").strip():
        return _from_tf_config(environ["TF_CONFIG"])
    if worker_hosts:
        return _from_worker_hosts(worker_hosts, task_index)
    if rank_table_file:
        return _from_rank_table(rank_table_file, rank_id, environ, base_port)
    if "SLURM_PROCID" in environ:
        return _from_slurm(environ, base_port)
    return None


def cluster_to_tf_config(cluster: Cluster) -> dict:
    """The TF_CONFIG dict for MultiWorkerMirroredStrategy (all workers, worker 0 acts as chief)."""
    return {"cluster": {"worker": list(cluster.workers)}, "task": {"type": "worker", "index": cluster.task_index}}


def apply_tf_config(cluster: Cluster, environ=None) -> str:
    """Set TF_CONFIG (in os.environ unless another mapping is given) and return the JSON written."""
    environ = os.environ if environ is None else environ
    text = json.dumps(cluster_to_tf_config(cluster))
    environ["TF_CONFIG"] = text
    return text
