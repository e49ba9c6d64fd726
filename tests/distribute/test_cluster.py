"""Cluster resolution: TF_CONFIG, worker hosts, both Ascend rank-table formats, SLURM; and every bad case."""
import copy
import json

import pytest

from ssd_tf.distribute.cluster import (Cluster, ClusterConfigError, apply_tf_config, cluster_to_tf_config,
                                       expand_hostlist, expand_tasks_per_node, load_rank_table, parse_rank_table,
                                       resolve_cluster, write_local_rank_table)


def group_table(n=8, server_id="0.0.0.0"):
    """The seed's format (group_list / instance_list)."""
    return {
        "board_id": "0x0000", "chip_info": "910", "deploy_mode": "lab", "group_count": "1",
        "group_list": [{
            "device_num": str(n), "server_num": "1", "group_name": "", "instance_count": str(n),
            "instance_list": [{"devices": [{"device_id": str(r), "device_ip": f"192.168.100.{101 + r}"}],
                               "rank_id": str(r), "server_id": server_id} for r in range(n)],
        }],
        "para_plane_nic_location": "device", "para_plane_nic_name": [f"eth{r}" for r in range(n)],
        "para_plane_nic_num": str(n), "status": "completed",
    }


def server_table(servers=(("10.0.0.1", 4), ("10.0.0.2", 4))):
    """The server_list / device format; ranks numbered across servers."""
    server_list, rank = [], 0
    for server_id, n in servers:
        devices = []
        for d in range(n):
            devices.append({"device_id": str(d), "device_ip": f"192.168.{d}.{rank}", "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server_id, "device": devices, "host_nic_ip": "reserve"})
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": server_list, "status": "completed"}


def write(tmp_path, table, name="rank_table.json"):
    path = tmp_path / name
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    return str(path)


# ------------------------------------------------------------------------------------------------ sources
def test_no_source_gives_none():
    assert resolve_cluster(environ={}) is None
    assert resolve_cluster(task_index=0, environ={"PATH": "/bin"}) is None


def test_tf_config_workers():
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2", "c:3"]},
                                    "task": {"type": "worker", "index": 2}})}
    c = resolve_cluster(environ=env)
    assert c == Cluster(("a:1", "b:2", "c:3"), 2, "TF_CONFIG")
    assert not c.is_chief and c.num_workers == 3 and c.device is None


def test_tf_config_with_chief_puts_chief_first():
    cfg = {"cluster": {"chief": ["h0:5"], "worker": ["h1:5", "h2:5"]}, "task": {"type": "worker", "index": 1}}
    c = resolve_cluster(environ={"TF_CONFIG": json.dumps(cfg)})
    assert c.workers == ("h0:5", "h1:5", "h2:5") and c.task_index == 2
    cfg["task"] = {"type": "chief", "index": 0}
    c = resolve_cluster(environ={"TF_CONFIG": json.dumps(cfg)})
    assert c.task_index == 0 and c.is_chief


@pytest.mark.parametrize("text, match", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "missing key 'cluster'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "missing key 'task'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}), "missing key 'index'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}), "task.type 'ps'"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}),
     "cluster.ps is not supported"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}),
     "task.index 2 out of range"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "zero"}}),
     "task.index must be an integer"),
    (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}),
     "cluster.worker must be a list"),
    (json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}), "cluster.worker is empty"),
    (json.dumps({"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}), "'a' is not host:port"),
    (json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}),
     "duplicate worker addresses"),
])
def test_tf_config_errors(text, match):
    with pytest.raises(ClusterConfigError, match=match):
        resolve_cluster(environ={"TF_CONFIG": text})


def test_worker_hosts():
    c = resolve_cluster(worker_hosts="10.0.0.1:2222, 10.0.0.2:2222", task_index=1, environ={})
    assert c.workers == ("10.0.0.1:2222", "10.0.0.2:2222") and c.task_index == 1 and c.source == "worker_hosts"
    with pytest.raises(ClusterConfigError, match="needs --task_index"):
        resolve_cluster(worker_hosts="a:1,b:2", environ={})
    with pytest.raises(ClusterConfigError, match="--task_index=2 out of range"):
        resolve_cluster(worker_hosts="a:1,b:2", task_index=2, environ={})
    with pytest.raises(ClusterConfigError, match="empty entry"):
        resolve_cluster(worker_hosts="a:1,,b:2", task_index=0, environ={})
    with pytest.raises(ClusterConfigError, match="port in 1..65535"):
        resolve_cluster(worker_hosts="a:1,b:70000", task_index=0, environ={})


def test_precedence_tf_config_then_worker_hosts_then_rank_table_then_slurm(tmp_path):
    table = write(tmp_path, group_table(2))
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]"}
    tf_config = json.dumps({"cluster": {"worker": ["t:1", "t:2"]}, "task": {"type": "worker", "index": 1}})
    everything = dict(slurm, RANK_ID="1", TF_CONFIG=tf_config)
    kwargs = dict(worker_hosts="w:1,w:2", task_index=0, rank_table_file=table)
    assert resolve_cluster(**kwargs, environ=everything).source == "TF_CONFIG"
    del everything["TF_CONFIG"]
    assert resolve_cluster(**kwargs, environ=everything).source == "worker_hosts"
    del kwargs["worker_hosts"]
    assert resolve_cluster(**kwargs, environ=everything).source.startswith("rank_table:")
    del kwargs["rank_table_file"]
    assert resolve_cluster(**kwargs, environ=everything).source.startswith("SLURM")
    # An empty TF_CONFIG counts as absent.
    assert resolve_cluster(environ={"TF_CONFIG": "  "}) is None


# -------------------------------------------------------------------------------------------- rank tables
def test_seed_format_single_server(tmp_path):
    path = write(tmp_path, group_table(8))
    c = resolve_cluster(rank_table_file=path, environ={"RANK_ID": "3"}, base_port=29500)
    assert c.workers == tuple(f"127.0.0.1:{29500 + r}" for r in range(8))
    assert c.task_index == 3 and c.source == f"rank_table:{path}"
    assert c.device.rank_id == 3 and c.device.device_id == "3" and c.device.device_ip == "192.168.100.104"
    # --rank_id beats RANK_ID.
    assert resolve_cluster(rank_table_file=path, rank_id=5, environ={"RANK_ID": "3"}).task_index == 5


def test_server_list_format_two_servers(tmp_path):
    path = write(tmp_path, server_table())
    c = resolve_cluster(rank_table_file=path, environ={"RANK_ID": "6"}, base_port=4000)
    assert c.workers == tuple([f"10.0.0.1:{4000 + r}" for r in range(4)] + [f"10.0.0.2:{4000 + r}" for r in range(4, 8)])
    assert c.task_index == 6 and c.device.server_id == "10.0.0.2" and c.device.device_id == "2"


def test_server_list_single_server_any_address_is_loopback(tmp_path):
    path = write(tmp_path, server_table(servers=(("0.0.0.0", 2),)))
    c = resolve_cluster(rank_table_file=path, rank_id="1", environ={})
    assert c.workers == ("127.0.0.1:29500", "127.0.0.1:29501") and c.task_index == 1


def test_ranks_are_ordered_by_rank_id_not_by_listing(tmp_path):
    table = group_table(4)
    table["group_list"][0]["instance_list"].reverse()
    devices = parse_rank_table(table)
    assert [d.rank_id for d in devices] == [0, 1, 2, 3] and [d.device_id for d in devices] == ["0", "1", "2", "3"]


def mutate(table, fn):
    table = copy.deepcopy(table)
    fn(table)
    return table


GROUP = group_table(4)
SERVER = server_table()
BAD_TABLES = [
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][2].update(rank_id="1")), "duplicate rank_id 1"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][3].update(rank_id="7")), r"missing \[3\]"),
    (mutate(GROUP, lambda t: t["group_list"][0].update(device_num="8")), "device_num is 8 but"),
    (mutate(GROUP, lambda t: t["group_list"][0].update(instance_count="3")), "instance_count is 3 but"),
    (mutate(GROUP, lambda t: t["group_list"][0].update(server_num="2")), "server_num is 2 but"),
    (mutate(GROUP, lambda t: t.update(group_count="2")), "group_count is 2 but"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1].pop("rank_id")),
     r"instance_list\[1\]: missing key 'rank_id'"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1].pop("server_id")), "missing key 'server_id'"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1].pop("devices")), "missing key 'devices'"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1]["devices"].append({"device_id": "9"})),
     "exactly one device per rank"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1]["devices"][0].pop("device_id")),
     "missing key 'device_id'"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1].update(rank_id="one")),
     "rank_id must be an integer"),
    (mutate(GROUP, lambda t: t["group_list"][0]["instance_list"][1]["devices"][0].update(device_id="0")),
     "device_id 0 on server '0.0.0.0' is used by ranks 0 and 1"),
    (mutate(GROUP, lambda t: t.update(status="initializing")), "status is 'initializing'"),
    (mutate(GROUP, lambda t: t.update(group_list={})), "group_list must be a list"),
    (mutate(GROUP, lambda t: t["group_list"][0].update(instance_list=[], instance_count="0", device_num="0",
                                                         server_num="0")),
     "no ranks listed"),
    (mutate(SERVER, lambda t: t.update(server_count="3")), "server_count is 3 but server_list has 2"),
    (mutate(SERVER, lambda t: t["server_list"][1]["device"][0].update(rank_id="0")), "duplicate rank_id 0"),
    (mutate(SERVER, lambda t: t["server_list"][1]["device"][0].pop("rank_id")),
     r"server_list\[1\] device\[0\]: missing key 'rank_id'"),
    (mutate(SERVER, lambda t: t["server_list"][0].pop("server_id")), "missing key 'server_id'"),
    (mutate(SERVER, lambda t: t["server_list"][0].update(device=[])), "device list is empty"),
    ({"version": "1.0"}, "neither 'group_list' nor 'server_list'"),
    ([1, 2], "expected a JSON object"),
]


@pytest.mark.parametrize("table, match", BAD_TABLES)
def test_bad_rank_tables_name_the_field_and_file(tmp_path, table, match):
    path = write(tmp_path, table)
    with pytest.raises(ClusterConfigError, match=match) as info:
        resolve_cluster(rank_table_file=path, rank_id=0, environ={})
    assert path in str(info.value)


def test_rank_table_file_errors(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ClusterConfigError, match=f"rank table file not found: {missing}"):
        resolve_cluster(rank_table_file=missing, rank_id=0, environ={})
    bad = write(tmp_path, "{'group_list': ", name="broken.json")
    with pytest.raises(ClusterConfigError, match=f"rank table file {bad} is not valid JSON"):
        load_rank_table(bad)


def test_rank_id_errors(tmp_path):
    path = write(tmp_path, group_table(4))
    with pytest.raises(ClusterConfigError, match="RANK_ID=4 is out of range: the rank table has 4 ranks"):
        resolve_cluster(rank_table_file=path, environ={"RANK_ID": "4"})
    with pytest.raises(ClusterConfigError, match="RANK_ID=-1 is out of range"):
        resolve_cluster(rank_table_file=path, environ={"RANK_ID": "-1"})
    with pytest.raises(ClusterConfigError, match="RANK_ID must be an integer rank in 0..3, got 'abc'"):
        resolve_cluster(rank_table_file=path, environ={"RANK_ID": "abc"})
    with pytest.raises(ClusterConfigError, match="--rank_id must be an integer"):
        resolve_cluster(rank_table_file=path, rank_id="1.5", environ={})
    with pytest.raises(ClusterConfigError, match="set RANK_ID or --rank_id"):
        resolve_cluster(rank_table_file=path, environ={})


def test_any_address_in_multi_server_table_is_rejected(tmp_path):
    path = write(tmp_path, server_table(servers=(("0.0.0.0", 2), ("10.0.0.2", 2))))
    with pytest.raises(ClusterConfigError, match="server_id 0.0.0.0 cannot be addressed"):
        resolve_cluster(rank_table_file=path, rank_id=0, environ={})


def test_write_local_rank_table_round_trips(tmp_path):
    path = tmp_path / "local.json"
    table = write_local_rank_table(path, 8)
    assert json.loads(path.read_text()) == table
    assert set(table) == set(group_table(8))  # the seed's keys
    c = resolve_cluster(rank_table_file=str(path), environ={"RANK_ID": "7"})
    assert c.num_workers == 8 and c.task_index == 7 and c.workers[7] == "127.0.0.1:29507"
    assert c.device.device_id == "7"
    assert len({d.device_ip for d in c.devices}) == 8
    with pytest.raises(ValueError, match="num_ranks"):
        write_local_rank_table(path, 0)


# -------------------------------------------------------------------------------------------------- SLURM
@pytest.mark.parametrize("hostlist, hosts", [
    ("node1", ["node1"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a[1-2],b,c[9-10]", ["a1", "a2", "b", "c9", "c10"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu-[008-010].cluster", ["gpu-008.cluster", "gpu-009.cluster", "gpu-010.cluster"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node1]", "node[a-b]", "node[3-1]"])
def test_expand_hostlist_errors(bad):
    with pytest.raises(ClusterConfigError, match="hostlist"):
        expand_hostlist(bad)


def test_expand_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ClusterConfigError, match="bad entry"):
        expand_tasks_per_node("2(3)")


def test_slurm_block_distribution():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "node[01-02,07]", "SLURM_JOB_NODELIST": "ignored[1-9]",
           "SLURM_STEP_TASKS_PER_NODE": "2(x3)"}
    c = resolve_cluster(environ=env, base_port=6000)
    assert c.workers == ("node01:6000", "node01:6001", "node02:6000", "node02:6001", "node07:6000", "node07:6001")
    assert c.task_index == 5 and c.source == "SLURM (SLURM_STEP_NODELIST)"


def test_slurm_uneven_and_job_nodelist_fallback():
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "2,1"}
    c = resolve_cluster(environ=env)
    assert c.workers == ("a:29500", "a:29501", "b:29500") and c.task_index == 2


@pytest.mark.parametrize("env, match", [
    ({"SLURM_PROCID": "0"}, "SLURM_NTASKS is not"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "SLURM_STEP_NODELIST"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a,b"}, "SLURM_PROCID=2 out of range"),
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a,b"}, "SLURM_PROCID must be an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "a,b"}, "do not divide evenly"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "3"},
     "describes 1 nodes but SLURM_JOB_NODELIST lists 2"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "1,1"},
     "sum to 2"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "a,b", "SLURM_LOCALID": "0"},
     "SLURM_LOCALID=0 but rank 1 is local task 1"),
])
def test_slurm_errors(env, match):
    with pytest.raises(ClusterConfigError, match=match):
        resolve_cluster(environ=env)


# ---------------------------------------------------------------------------------------------- TF_CONFIG out
def test_cluster_to_tf_config_round_trip():
    c = Cluster(("127.0.0.1:29500", "127.0.0.1:29501"), 1, "test")
    env = {}
    text = apply_tf_config(c, environ=env)
    assert json.loads(env["TF_CONFIG"]) == cluster_to_tf_config(c) == {
        "cluster": {"worker": ["127.0.0.1:29500", "127.0.0.1:29501"]}, "task": {"type": "worker", "index": 1}}
    again = resolve_cluster(environ={"TF_CONFIG": text})
    assert again.workers == c.workers and again.task_index == 1


def test_apply_tf_config_defaults_to_os_environ(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    c = Cluster(("h:1",), 0, "test")
    apply_tf_config(c)
    import os
    assert json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"] == ["h:1"]


def test_cluster_validation():
    with pytest.raises(ClusterConfigError, match="task index 2 out of range"):
        Cluster(("a:1", "b:1"), 2, "test")
    with pytest.raises(ClusterConfigError, match="worker list is empty"):
        Cluster((), 0, "test")
