"""Scenarios for test_python_client.py, run by the Python of the fresh virtual environment that
ftd-client was pip-installed into (so this file imports nothing from the tests). Each prints
JSON lines on stdout: `python ftd_client_driver.py SCENARIO ARGS_JSON`."""
import faulthandler
import json
import os
import signal
import sys
import time

import ftd_client as fc


# The test sends SIGUSR1 to a driver that overran its time: every thread's stack to stderr.
faulthandler.register(signal.SIGUSR1, all_threads=True)


def out(**kw):
    print(json.dumps(kw), flush=True)


def error(e):
    return {"type": type(e).__name__, "code": e.code.name, "field": e.field, "message": e.message}


def attempt(fn):
    try:
        return {"ok": fn()}
    except fc.FtdError as e:
        return {"error": error(e)}


def basics(a):
    c = fc.Client(a["endpoint"], token=a["token"])
    spec = a["spec"]
    first = c.create_job(spec, labels={"team": "nlp"}, request_id="pipeline-run-1")
    again = c.create_job(spec, labels={"team": "nlp"}, request_id="pipeline-run-1")
    out(created=first.id, again=again.id, state=fc.state_name(first.status.state),
        spec_type=type(first.spec).__name__, total_steps=first.status.progress.total_steps)
    out(conflict=attempt(lambda: c.create_job(spec, labels={"team": "cv"}, request_id="pipeline-run-1").id))
    bad = dict(spec, hyperparameters=dict(spec["hyperparameters"], lr=-1))
    out(invalid=attempt(lambda: c.create_job(bad).id))
    out(unknown_field=attempt(lambda: c.create_job(dict(spec, hyperparameterz={})).id))
    out(bad_label=attempt(lambda: c.create_job(spec, labels={"Bad Key": "x"}).id))
    plan = c.plan(spec)
    out(plan={"world_size": plan.world_size, "data_parallel_size": plan.data_parallel_size,
              "gradient_accumulation_steps": plan.gradient_accumulation_steps, "notes": list(plan.notes)})
    out(plan_invalid=attempt(lambda: c.plan(dict(spec, resources={"nodes": 1, "gpus_per_node": 0})).world_size))
    got = c.get_job(first.id)
    out(got=got.id, labels=dict(got.labels), create_time=got.create_time.ToJsonString())
    out(listed_by_label=[j.id for j in c.list_jobs(labels={"team": "nlp"})],
        listed_queued=[j.id for j in c.list_jobs(states=["QUEUED"])],
        listed_succeeded=[j.id for j in c.list_jobs(states=[fc.jobs_pb2.SUCCEEDED])])
    # Paging: more jobs than one page.
    for i in range(5):
        c.create_job(spec, request_id=f"page-{i}")
    out(paged=len(list(c.list_jobs(page_size=2))))
    out(not_found=attempt(lambda: c.get_job("job-doesnotexist").id))
    out(bad_id=attempt(lambda: c.get_job("no/such id").id))
    out(bad_state=attempt(lambda: list(c.list_jobs(states=["FINISHED"]))))
    out(bad_token=attempt(lambda: fc.Client(a["endpoint"], token="not-a-token").get_job(first.id).id))
    out(no_token=attempt(lambda: fc.Client(a["endpoint"], token="", config_file=os.devnull).get_job(first.id).id))
    cancelled = c.cancel_job(first.id, reason="pipeline aborted")
    out(cancelled=fc.state_name(cancelled.status.state))
    events = [(e.seq, e.WhichOneof("kind")) for e in c.watch(first.id)]
    out(watched=events, final=fc.state_name(c.wait(first.id).status.state))
    stored = list(c.events(first.id, page_size=1))
    out(events=[e.seq for e in stored],
        messages=[e.message for e in stored if e.WhichOneof("kind") == "message"])
    out(checkpoints=[x.step for x in c.checkpoints(first.id)], logs=[x.text for x in c.logs(first.id)])
    out(as_dict=fc.to_dict(got)["labels"])
    unreachable = fc.Client("127.0.0.1:1", retry_seconds=0.5)
    out(unreachable=attempt(lambda: unreachable.get_job("x").id))


def config(a):
    """Connection settings from the environment and the config file, as ftctl reads them."""
    os.environ.pop("FTD_CONFIG", None)
    os.environ["FTD_ENDPOINT"] = a["endpoint"]
    os.environ["FTD_TOKEN"] = a["token"]
    os.environ["HOME"] = a["home"]
    out(env=len(list(fc.Client().list_jobs())) >= 0, endpoint=fc.Client().endpoint)
    del os.environ["FTD_ENDPOINT"], os.environ["FTD_TOKEN"]
    os.environ["FTD_CONFIG"] = a["config"]
    c = fc.Client()
    out(file=c.options.config_used, endpoint=c.endpoint, timeout=c.options.timeout,
        jobs=len(list(c.list_jobs())))
    for bad in a["bad_configs"]:
        os.environ["FTD_CONFIG"] = bad
        try:
            fc.Client()
            out(bad=bad, error=None)
        except fc.ConfigError as e:
            out(bad=bad, error=str(e))


def tls(a):
    """A coordinator serving TLS: trusted through ca_cert, refused without it."""
    c = fc.Client(a["endpoint"], token=a["token"], ca_cert=a["ca_cert"])
    out(tls=c.options.tls, jobs=len(list(c.list_jobs())))
    c = fc.Client(f"https://{a['endpoint']}", token=a["token"], ca_cert=a["ca_cert"])
    out(https_prefix=c.endpoint, jobs=len(list(c.list_jobs())))
    out(untrusted=attempt(lambda: len(list(fc.Client(a["endpoint"], token=a["token"], tls=True,
                                                     retry_seconds=0).list_jobs()))))
    out(plaintext=attempt(lambda: len(list(fc.Client(a["endpoint"], token=a["token"],
                                                     retry_seconds=0, timeout=5).list_jobs()))))


def watch(a):
    c = fc.Client(a["endpoint"], token=a["token"], retry_seconds=60,
                  keepalive_seconds=a.get("keepalive_seconds", 30))

    def on_reconnect(last_seq, e):
        out(reconnect=last_seq, code=e.code.name, message=e.message, time=time.time())
    for e in c.watch(a["job"], after_seq=a.get("after_seq", 0), resume_seconds=120,
                     on_reconnect=on_reconnect):
        kind = e.WhichOneof("kind")
        out(seq=e.seq, kind=kind, state=fc.state_name(e.status.state) if kind == "status" else None)
    out(done=True)


def pipeline(a):
    """What examples/pipeline_step.py does, with the events reported as they come."""
    c = fc.Client(a["endpoint"], token=a["token"], retry_seconds=60)
    job = c.create_job(a["spec"], request_id=a["request_id"])
    out(created=job.id)

    def on_reconnect(last_seq, e):
        out(reconnect=last_seq, code=e.code.name)
    for e in c.watch(job.id, resume_seconds=300, on_reconnect=on_reconnect):
        kind = e.WhichOneof("kind")
        out(seq=e.seq, kind=kind, state=fc.state_name(e.status.state) if kind == "status" else None,
            step=e.checkpoint.step if kind == "checkpoint" else None)
    final = c.get_job(job.id)
    out(final=fc.state_name(final.status.state), attempt=final.status.attempt,
        steps=final.status.progress.step, error=final.status.error.message,
        checkpoints=[{"step": x.step, "path": x.path} for x in c.checkpoints(job.id)],
        logs=[x.text for x in c.logs(job.id, tail=20)], log_ranks=sorted({x.rank for x in c.logs(job.id)}))


if __name__ == "__main__":
    globals()[sys.argv[1]](json.loads(sys.argv[2]))
