"""Tests for envs.sim.jobtrace: Alibaba GPU-sharing trace format round trip, errors, synthesis, clusters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from envs.sim.cluster import Demand
from envs.sim.errors import ConfigError
from envs.sim.jobtrace import (
    NODE_COLUMNS,
    POD_COLUMNS,
    cluster_from_trace,
    read_alibaba_trace,
    synthetic_job_trace,
    write_alibaba_trace,
)

NODES_CSV = """sn,cpu_milli,memory_mib,gpu,model
openb-node-0227,32000,262144,0,
openb-node-0228,128000,786432,8,G3
openb-node-0229,96000,786432,8,V100M32
openb-node-0233,32000,131072,4,V100M16
"""

PODS_CSV = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0017,88000,327680,8,1000,,Burstable,Succeeded,9437497,10769854,9437497
openb-pod-0005,20000,65536,0,0,,LS,Running,2759674,,2759676
openb-pod-0022,4000,15258,1,220,,BE,Running,9679175,9973826,9679175
openb-pod-0031,16000,32768,1,1000,V100M16|V100M32|V100M32,LS,Running,9961302,9994357,9961304
openb-pod-0061,11908,47104,1,1000,A10,BE,Pending,10001278,10001403,
"""


def write(tmp_path: Path, pods: str, nodes: str = NODES_CSV) -> tuple[Path, Path]:
    pods_path, nodes_path = tmp_path / "pods.csv", tmp_path / "nodes.csv"
    pods_path.write_text(pods)
    nodes_path.write_text(nodes)
    return pods_path, nodes_path


def test_reads_the_published_format(tmp_path: Path) -> None:
    trace = read_alibaba_trace(*write(tmp_path, PODS_CSV))
    # Node types first in order of appearance, then types only pods ask for.
    assert trace.gpu_type_names == ("G3", "V100M32", "V100M16", "A10")
    assert trace.node_gpu_type.tolist() == [-1, 0, 1, 2]
    assert trace.node_gpus.tolist() == [0, 8, 8, 4]
    # Sorted by creation time.
    assert trace.job_names == (
        "openb-pod-0005",
        "openb-pod-0017",
        "openb-pod-0022",
        "openb-pod-0031",
        "openb-pod-0061",
    )
    assert trace.creation_s.tolist() == [2759674, 9437497, 9679175, 9961302, 10001278]
    assert math.isinf(trace.deletion_s[0]) and math.isinf(trace.duration_s[0])  # still running
    assert math.isnan(trace.scheduled_s[4])  # never scheduled
    assert trace.duration_s[1] == 10769854 - 9437497
    assert trace.job_gpu_types[3] == (1, 2)  # duplicates in gpu_spec collapse
    assert trace.demand(2) == Demand(num_gpu=1, gpu_milli=220, cpu_milli=4000, memory_mib=15258)
    assert trace.demand(3, model=1).gpu_types == (1, 2) and trace.demand(3, model=1).model == 1
    assert trace.demand(0).num_gpu == 0


def test_synthetic_trace_round_trips(tmp_path: Path) -> None:
    trace = synthetic_job_trace(np.random.default_rng(11), n_nodes=20, n_jobs=400, gpu_spec_share=0.3)
    pods_path, nodes_path = tmp_path / "p.csv", tmp_path / "n.csv"
    write_alibaba_trace(trace, pods_path, nodes_path)
    assert pods_path.read_text().splitlines()[0] == ",".join(POD_COLUMNS)
    assert nodes_path.read_text().splitlines()[0] == ",".join(NODE_COLUMNS)
    back = read_alibaba_trace(pods_path, nodes_path)
    assert back.equals(trace)
    assert np.isinf(trace.deletion_s).any()  # open-ended jobs survive the round trip as empty fields
    assert any(trace.job_gpu_types)
    other = synthetic_job_trace(np.random.default_rng(12), n_nodes=20, n_jobs=400)
    assert not other.equals(trace)


def test_published_sample_round_trips(tmp_path: Path) -> None:
    trace = read_alibaba_trace(*write(tmp_path, PODS_CSV))
    write_alibaba_trace(trace, tmp_path / "p2.csv", tmp_path / "n2.csv")
    assert read_alibaba_trace(tmp_path / "p2.csv", tmp_path / "n2.csv").equals(trace)


def test_synthetic_mix_is_realistic() -> None:
    trace = synthetic_job_trace(np.random.default_rng(0), n_nodes=50, n_jobs=4000)
    share = (trace.num_gpu == 1) & (trace.gpu_milli < 1000)
    assert 0.40 < share.mean() < 0.50
    assert ((trace.gpu_milli[share] >= 100) & (trace.gpu_milli[share] <= 500)).all()
    assert 0.09 < (trace.num_gpu == 0).mean() < 0.15
    assert set(np.unique(trace.num_gpu)) == {0, 1, 2, 4, 8}
    assert np.all(np.diff(trace.creation_s) >= 0)
    assert np.all(trace.deletion_s > trace.creation_s)
    # Every job fits an empty node of the cluster.
    cluster = cluster_from_trace(trace)
    for d in trace.demands()[:500]:
        assert cluster.feasible(d).any(), d
    with pytest.raises(ConfigError, match=r"synthetic_job_trace\.n_nodes: 0"):
        synthetic_job_trace(np.random.default_rng(0), n_nodes=0)


def test_cluster_from_trace_totals(tmp_path: Path) -> None:
    trace = read_alibaba_trace(*write(tmp_path, PODS_CSV))
    c = cluster_from_trace(trace, n_models=2)
    assert c.n_nodes == 4 and c.total_gpus() == 20
    assert int(c.cpu_free_milli.sum()) == 32000 + 128000 + 96000 + 32000
    assert int(c.mem_free_mib.sum()) == 262144 + 786432 + 786432 + 131072
    assert c.gpu_type_names == trace.gpu_type_names and c.node_names == trace.node_names
    assert c.cached.shape == (4, 2)
    # The A10-only pod fits nowhere (no A10 node); the V100 pod fits the two V100 nodes.
    assert not c.feasible(trace.demand(4)).any()
    assert c.feasible(trace.demand(3)).tolist() == [False, False, True, True]


POD_HEADER = ",".join(POD_COLUMNS) + "\n"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("p,1000,10,1,500,,LS,Running,5", "9 fields, expected 11"),
        ("p,abc,10,1,500,,LS,Running,5,6,5", "cpu_milli 'abc' is not a number"),
        ("p,1000,10,1,1500,,LS,Running,5,6,5", r"gpu_milli 1500 must be in \[0, 1000\]"),
        ("p,1000,10,2,500,,LS,Running,5,6,5", "demand.gpu_milli: 500 must be 1000"),
        ("p,1000,-10,1,500,,LS,Running,5,6,5", "memory_mib -10 must be >= 0"),
        ("p,1000,10,1,500,T4||A10,LS,Running,5,6,5", r"gpu_spec 'T4\|\|A10' has an empty type name"),
        ("p,1000,10,1,500,,LS,Running,,6,5", "creation_time is required"),
        ("p,1000,10,1,500,,LS,Running,9,6,5", "deletion_time 6 is before creation_time 9"),
        (",1000,10,1,500,,LS,Running,5,6,5", "name is empty"),
        ("p,1000,10,1.5,500,,LS,Running,5,6,5", "num_gpu '1.5' must be a whole number"),
    ],
)
def test_malformed_pod_rows_name_file_and_line(tmp_path: Path, row: str, reason: str) -> None:
    good = "ok,1000,10,1,500,,LS,Running,1,2,1\n"
    with pytest.raises(ConfigError, match=rf"pods\.csv:3: {reason}"):
        read_alibaba_trace(*write(tmp_path, POD_HEADER + good + row + "\n"))
    # The same file without the bad row reads.
    assert read_alibaba_trace(*write(tmp_path, POD_HEADER + good)).n_jobs == 1


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ("sn,cpu_milli,memory_mib,gpu\nn0,1,1,0\n", r"nodes\.csv:1: header"),
        (
            "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,\n",
            r"nodes\.csv:2: model is empty for a node with 2 GPUs",
        ),
        ("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,0,\nn0,1,1,0,\n", r"nodes\.csv:3: sn 'n0' appears twice"),
        ("", r"nodes\.csv:1: empty file"),
    ],
)
def test_malformed_node_files(tmp_path: Path, nodes: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_alibaba_trace(*write(tmp_path, POD_HEADER, nodes))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        read_alibaba_trace(tmp_path / "none.csv", tmp_path / "nodes.csv")


def test_nan_text_fields_read_as_empty(tmp_path: Path) -> None:
    pods = POD_HEADER + "p,1000,10,1,500,nan,LS,Running,5,nan,nan\n"
    nodes = "sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1000,0,nan\nn1,1000,1000,1,T4\n"
    trace = read_alibaba_trace(*write(tmp_path, pods, nodes))
    assert (
        trace.job_gpu_types == ((),) and math.isinf(trace.deletion_s[0]) and math.isnan(trace.scheduled_s[0])
    )
    assert trace.gpu_type_names == ("T4",) and trace.node_gpu_type.tolist() == [-1, 0]
