"""Durable workflows on a real cluster: control flow, resume after SIGKILL of the client and
after a scheduler restart, changed arguments, cancellation, tenants."""

from __future__ import annotations

import dask_oxigdal  # noqa: F401

# isort: split
import os
import signal
import subprocess
import sys
import time

import pytest
from distributed import Client, LocalCluster

import dask_oxigdal as dox
from dask_oxigdal.workflows import (
    StepArgumentsChanged,
    WorkflowCancelled,
    WorkflowError,
    _WStore,
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import _workflow_procs as procs  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _cluster() -> LocalCluster:
    return LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        worker_dashboard_address=":0",
    )


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, Client(cluster) as c:
        yield c


@pytest.fixture
def dirs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    return str(tmp_path / "store"), str(runs)


def _is_workflow_key(key) -> bool:
    """A step or orchestrator task of a workflow (not a per-client keeper task)."""
    k = str(key)
    return ("-oxwf-" in k and "-oxwf-0-keeper" not in k) or k.startswith("oxwf_run-")


def _oxwf_keys(dask_scheduler):
    return [str(k) for k in dask_scheduler.tasks if _is_workflow_key(k)]


def _wait_for(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


def _recorded_steps(store, wid):
    ws = _WStore(os.path.abspath(store), None, wid)
    out = {}
    seq = 1
    names = ws.store.names()
    while ws.store.filename(f"s{seq}") in names:
        out[seq] = ws.get(f"s{seq}")
        seq += 1
    return out


@pytest.mark.parametrize(
    "cloud, loops, branch_tag",
    [(0.1, 0, "clear"), (0.5, 1, "cloudy"), (0.1, 4, "clear")],
)
def test_control_flow_forms(client, dirs, cloud, loops, branch_tag):
    store, runs = dirs
    h = dox.start_workflow(
        client, procs.control_flow, runs, cloud, loops, workflow_id="cf", store=store
    )
    out = h.result(timeout=120)
    assert out == {
        "branch": 0,
        "loop": sum(10 * i for i in range(loops)),
        "fan": sum(10 * i for i in range(5)),
        "caught": "tile 0 has no data",
        "while": 2,
    }
    c = procs.counts(runs)
    assert c.get(f"{branch_tag}-0") == 1
    assert "cloudy-0" not in c if branch_tag == "clear" else "clear-0" not in c
    assert sum(v for k, v in c.items() if k.startswith("loop-")) == loops
    assert all(c[f"fan-{i}"] == 1 for i in range(5))
    assert h.status()["state"] == "done"
    # resuming a finished workflow runs nothing again and gives the same result
    assert dox.resume_workflow(client, "cf", store=store).result() == out
    assert procs.counts(runs) == c
    # a re-run of the same function from its records (a failed-and-fixed resume) runs no step
    assert [w["id"] for w in dox.workflows(client, store=store)] == ["cf"]
    # finished workflows leave no task on the scheduler
    _wait_for(lambda: not client.run_on_scheduler(_oxwf_keys))
    kinds = [e["kind"] for _, e in client.get_events("oxigdal") if "workflow" in e]
    assert "workflow-started" in kinds and "workflow-done" in kinds


def _start_subprocess_client(address, store, runs, wid, n, nap, delay):
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, _workflow_procs as p; sys.argv[1:] = "
            f"{[address, store, runs, wid, str(n), str(nap), str(delay)]!r}; p.main()",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kill_at", ["fan-out", "sleep"])
def test_resume_after_sigkill_of_the_client(client, dirs, kill_at):
    """Kill -9 the client process mid-run; resume here: no recorded step runs again."""
    store, runs = dirs
    n, nap, delay = 6, 3.0, 0.5
    proc = _start_subprocess_client(client.scheduler.address, store, runs, "crash", n, nap, delay)
    try:
        if kill_at == "fan-out":  # steps in flight, some recorded
            _wait_for(lambda: len(_recorded_steps(store, "crash")) >= 2, 120)
        else:  # inside the durable sleep
            _wait_for(lambda: len(_recorded_steps(store, "crash")) >= n + 1, 120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    recorded = _recorded_steps(store, "crash")
    before = procs.counts(runs)
    _wait_for(lambda: dox.workflows(client, store=store)[0]["state"] == "interrupted")
    h = dox.resume_workflow(client, "crash", store=store)
    assert h.result(timeout=120) == sum(10 * i for i in range(n)) + 0
    after = procs.counts(runs)
    # 0 recorded steps re-ran; a step in flight at the kill may have run once more
    for seq, rec in recorded.items():
        if rec["name"] == "work":
            i = seq - 1
            assert after[f"tile-{i}"] == before[f"tile-{i}"] == 1, (seq, before, after)
    assert all(after[f"tile-{i}"] <= 2 for i in range(n))
    assert after["after-0"] == 1
    if kill_at == "sleep":
        # the wake-up time recorded before the kill was kept, and the step after the
        # sleep ran after it (the resumed run slept only the remainder)
        sleep_rec = _recorded_steps(store, "crash")[n + 1]
        assert sleep_rec["wake"] == recorded[n + 1]["wake"]
        (mark,) = [f for f in os.listdir(runs) if f.startswith("after-0-")]
        assert os.stat(os.path.join(runs, mark)).st_mtime >= sleep_rec["wake"] - 0.01


def test_resume_after_scheduler_restart(dirs):
    """The cluster dies mid-run; a new cluster with the same store resumes the workflow."""
    store, runs = dirs
    n = 6
    with _cluster() as cluster, Client(cluster) as c:
        h = dox.start_workflow(c, procs.crashy, runs, n, 0.0, 0.5, workflow_id="sched", store=store)
        _wait_for(lambda: len(_recorded_steps(store, "sched")) >= 2, 120)
        for pid in c.run(os.getpid).values():
            os.kill(pid, signal.SIGKILL)
    with pytest.raises((WorkflowError, TimeoutError)):
        h.result(timeout=60)
    recorded = _recorded_steps(store, "sched")
    with _cluster() as cluster, Client(cluster) as c:
        assert dox.workflows(c, store=store)[0]["state"] in ("interrupted", "running")
        h = dox.resume_workflow(c, "sched", store=store)
        assert h.result(timeout=120) == sum(10 * i for i in range(n))
    after = procs.counts(runs)
    for seq in recorded:
        assert after[f"tile-{seq - 1}"] == 1


def test_changed_argument_of_a_recorded_step_is_an_error(client, dirs, tmp_path):
    store, runs = dirs
    param = tmp_path / "param"
    param.write_text("1")
    (tmp_path / "param.fail").write_text("")
    h = dox.start_workflow(
        client, procs.reads_param, runs, str(param), workflow_id="arg", store=store
    )
    with pytest.raises(RuntimeError, match="failed after its step"):
        h.result(timeout=60)
    param.write_text("2")
    (tmp_path / "param.fail").unlink()
    h = dox.resume_workflow(client, "arg", store=store)
    with pytest.raises(StepArgumentsChanged, match="step 'work' \\(call #1 of workflow 'arg'\\)"):
        h.result(timeout=60)
    assert procs.counts(runs) == {"param-1": 1}
    # the same input again: the recorded step replays, the workflow finishes
    param.write_text("1")
    assert dox.resume_workflow(client, "arg", store=store).result(timeout=60) == 10
    assert procs.counts(runs) == {"param-1": 1}


def test_cancel_stops_the_workflow_and_its_running_steps(client, dirs):
    store, runs = dirs
    h = dox.start_workflow(client, procs.slow_fanout, runs, 4, 30.0, workflow_id="cx", store=store)
    _wait_for(lambda: len(procs.counts(runs)) >= 2)
    h.cancel()
    with pytest.raises(WorkflowCancelled):
        h.result(timeout=60)
    assert h.status()["state"] == "cancelled"
    # its running steps were cancelled: no oxwf task is left on the scheduler
    _wait_for(lambda: not client.run_on_scheduler(_oxwf_keys), 30)
    assert dox.resume_workflow(client, "cx", store=store).status()["state"] == "cancelled"


def test_two_tenants_share_a_cluster(client, dirs):
    store, _ = dirs
    # configured tenants: an unknown tenant name is accounted to (and stamped as) the
    # default tenant, whose tasks carry no oxigdal_tenant annotation on the worker
    dox.register(client, replace=True, tenants={"team-a": 1, "team-b": 1, "override": 1})
    handles = []
    for tenant in ("team-a", "team-b"):
        with dox.annotate(tenant=tenant):
            handles.append(
                dox.start_workflow(
                    client, procs.tenant_probe, workflow_id=f"t-{tenant}", store=store
                )
            )
    for tenant, h in zip(("team-a", "team-b"), handles, strict=True):
        own, overridden = h.result(timeout=60)
        assert own["oxigdal_tenant"] == tenant
        assert overridden["oxigdal_tenant"] == "override"
    # a step's own option wins over the workflow's annotation; a bad option fails at once
    with pytest.raises(ValueError, match="tenant"):
        dox.step(tenant="")(procs.work.fn)


def test_bad_ids_and_unknown_workflows(client, dirs):
    store, _ = dirs
    with pytest.raises(WorkflowError, match="workflow_id='a b'"):
        dox.start_workflow(client, procs.slow_fanout, workflow_id="a b", store=store)
    with pytest.raises(WorkflowError, match="no workflow 'nope'"):
        dox.resume_workflow(client, "nope", store=store)
    with pytest.raises(WorkflowError, match="only inside a workflow"):
        procs.work.submit("x", "y", 1)
    with pytest.raises(TypeError, match="valid: retries"):
        dox.step(retry=2)(procs.work.fn)


def test_cli_workflow_list_status_resume_cancel(client, dirs):
    from click.testing import CliRunner

    from dask_oxigdal.cli import oxigdal

    store, runs = dirs
    h = dox.start_workflow(client, procs.slow_fanout, runs, 2, 0.0, workflow_id="cli", store=store)
    assert h.result(timeout=60) == 10
    addr = ["--scheduler", client.scheduler.address, "--store", store]
    runner = CliRunner()
    res = runner.invoke(oxigdal, ["workflow", "list", *addr])
    assert res.exit_code == 0, res.output
    assert '"id": "cli"' in res.output and '"state": "done"' in res.output
    res = runner.invoke(oxigdal, ["workflow", "status", "cli", *addr])
    assert res.exit_code == 0 and '"state": "done"' in res.output
    res = runner.invoke(oxigdal, ["workflow", "resume", "cli", *addr])
    assert res.exit_code == 0 and res.output.strip() == "10"
    res = runner.invoke(oxigdal, ["workflow", "cancel", "nope", *addr])
    assert res.exit_code != 0 and "no workflow 'nope'" in res.output


def test_two_tenants_workflows_share_the_cluster_at_their_weights(client, dirs):
    """Two workflows of tenants weighted 3:1 fan out at once: their steps get 3:1 of the
    worker time while both have work (measured from worker-side start/stop times)."""
    from _sched_common import contended_shares

    store, _ = dirs
    dox.register(client, replace=True, tenants={"team-a": 3, "team-b": 1})
    handles = {}
    for tenant in ("team-a", "team-b"):
        with dox.annotate(tenant=tenant):
            handles[tenant] = dox.start_workflow(
                client,
                procs.tenant_fanout,
                tenant,
                64,
                0.1,
                workflow_id=f"share-{tenant}",
                store=store,
                fsync=False,
            )
    records = [r for h in handles.values() for r in h.result(timeout=120)]
    shares, interval = contended_shares(records)
    print(f"\nworkflow steps, weights 3:1: shares {shares} over {interval:.2f} s contended")
    assert shares["team-a"] == pytest.approx(0.75, abs=0.12), shares


def test_progress_on_the_scheduler_page_and_in_dox_progress(client, dirs):
    import io

    from dask_oxigdal.monitoring.http import state
    from dask_oxigdal.workflows.progress import scheduler_progress

    store, runs = dirs
    dox.register(client, replace=True)
    with dox.annotate(tenant="team-p"):
        h = dox.start_workflow(
            client, procs.slow_fanout, runs, 3, 0.3, workflow_id="prog", store=store
        )
    out = io.StringIO()
    (final,) = dox.progress(h, stream=out)
    assert final["state"] == "done" and final["steps"]["done"] == 3
    assert "prog done [" in out.getvalue() and "3/3 steps" in out.getvalue()
    # the scheduler's view: the newest progress event of the workflow
    rows = client.run_on_scheduler(lambda dask_scheduler: scheduler_progress(dask_scheduler))
    (row,) = [w for w in rows if w["workflow"] == "prog"]  # the final state is sent synchronously
    assert row["state"] == "done" and row["steps"]["done"] == 3 and row["running"] == 0
    assert row["tenant"] == "team-p"

    def page_workflows(dask_scheduler):
        return state(dask_scheduler)["workflows"]

    assert any(w["workflow"] == "prog" for w in client.run_on_scheduler(page_workflows))


def _store_cache_size():
    from dask_oxigdal.workflows import _store

    return len(_store._STORES)


def _footprint(dask_scheduler):
    from dask_oxigdal.scheduling.extension import NAME

    ext = dask_scheduler.plugins.get(NAME)
    return {
        "tasks": [str(k) for k in dask_scheduler.tasks if _is_workflow_key(k)],
        "groups": [str(g) for g in dask_scheduler.task_groups if "oxwf" in str(g)],
        "keepers": [str(k) for k in dask_scheduler.tasks if "-oxwf-0-keeper" in str(k)],
        "prefixes": [str(p) for p in dask_scheduler.task_prefixes if "oxwf" in str(p)],
        "ext_tasks": [str(k) for k in (ext.info if ext is not None else ()) if "oxwf" in str(k)],
    }


def test_finished_workflows_leave_no_per_workflow_state(client, dirs):
    """Our per-workflow structures are emptied when runs end; the scheduler keeps one
    task prefix per step function ('work-oxwf'), nothing keyed by a workflow id."""
    from dask_oxigdal.workflows import _run, _store

    store, runs = dirs
    dox.register(client, replace=True)
    n = _store.MAX_STORES + 3
    subscribed = len(_run._SUBSCRIBED)
    for i in range(n):
        dox.start_workflow(
            client, procs.slow_fanout, runs, 2, 0.0, workflow_id=f"leak-check-{i}", store=store
        ).result(timeout=60)
    assert _run._ACTIVE == {}
    assert len(_store._STORES) <= _store.MAX_STORES
    # one control-topic subscription per client, not per workflow
    assert len(_run._SUBSCRIBED) <= max(subscribed, 1)

    def gone():
        fp = client.run_on_scheduler(_footprint)
        return not fp["tasks"] and not fp["ext_tasks"]

    _wait_for(gone, 30)
    fp = client.run_on_scheduler(_footprint)
    # what stays is per step function and client (a keeper task and its task group), not
    # per workflow: bounded by the step names, whatever the number of runs
    assert not any("leak" in g for g in fp["groups"] + fp["keepers"]), fp
    assert len(fp["keepers"]) <= len(_run._KEEPERS) <= _run.MAX_KEEPERS, fp
    # task prefixes (which Dask never forgets) are per step function, not per workflow
    assert "work-oxwf" in fp["prefixes"] and not any("leak" in p for p in fp["prefixes"]), fp
    # the workers' store caches are bounded too
    sizes = client.run(_store_cache_size)
    assert all(v <= _store.MAX_STORES for v in sizes.values()), sizes


def _span_footprint(dask_scheduler):
    spans = dask_scheduler.extensions["spans"].spans.values()
    return {
        "spans": len(spans),
        "groups": sum(len(sp.groups) for sp in spans),
        "metadata": sum(len((sp._metadata or {}).get("collections", ())) for sp in spans),
    }


def test_runs_add_no_dask_spans_or_task_groups(client, dirs):
    """Dask keeps every span, the task groups it aggregates and a metadata record per
    graph update for the scheduler's lifetime (dask/distributed#7977). Once a step's
    task group exists (its keeper holds it), later runs add no span and no task group,
    and a ``step.map`` fan-out adds one metadata record, not one per element."""
    store, runs = dirs
    dox.start_workflow(client, procs.map_fanout, runs, 8, workflow_id="sp-0", store=store).result(
        timeout=60
    )
    before = client.run_on_scheduler(_span_footprint)
    for i in range(1, 4):
        h = dox.start_workflow(
            client, procs.map_fanout, runs, 8, workflow_id=f"sp-{i}", store=store
        )
        assert h.result(timeout=60) == 10 * sum(range(8))
    after = client.run_on_scheduler(_span_footprint)
    assert after["spans"] == before["spans"], (before, after)
    assert after["groups"] == before["groups"], (before, after)
    # per run: one graph update for the 8-way map and one for the sequential step
    assert after["metadata"] - before["metadata"] <= 3 * 2, (before, after)
