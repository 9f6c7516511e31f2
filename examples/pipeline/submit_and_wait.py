#!/usr/bin/env python3
"""A pipeline step (Airflow, Kubeflow Pipelines, Argo, a CI job) that fine-tunes with ftd:
validates the job spec, submits it idempotently, follows it to the end and reports the result.

    pip install ./client/python
    export FTD_ENDPOINT=ftd.example.com:7070 FTD_TOKEN=...     # or ~/.config/ftd/config.yaml
    python examples/pipeline/submit_and_wait.py job.json --request-id "$RUN_ID" \
        --label team=nlp --output-json result.json

--request-id should be the pipeline run's id (Airflow's run_id + task, Argo's workflow uid):
a retried step then finds the job its first try submitted instead of training twice.

Exit status: 0 SUCCEEDED; 1 FAILED or CANCELLED; 2 the spec was rejected (the message names
the field) or the request id was used for another spec; 3 the coordinator could not be reached or refused the token.
--output-json writes {"job_id", "state", "checkpoints": [{"step", "path"}], "final_checkpoint",
"metrics"}: the next step (evaluation, export, deployment) reads the checkpoint from there."""
import argparse
import json
import signal
import sys

import ftd_client
from ftd_client import AlreadyExists, Client, FtdError, InvalidArgument, state_name


def load_spec(path):
    with open(path) as f:
        if path.endswith((".yaml", ".yml")):
            import yaml  # PyYAML, only for YAML job files
            return yaml.safe_load(f)
        return json.load(f)


def progress(event):
    kind = event.WhichOneof("kind")
    if kind == "status":
        s = event.status
        print(f"[ftd] {state_name(s.state)} (attempt {s.attempt})"
              + (f": {s.error.code} {s.error.message}" if s.error.message else ""), flush=True)
    elif kind == "metrics":
        m = event.metrics
        print(f"[ftd] loss {m.loss:.4f}  {m.tokens_per_second_per_gpu:,.0f} tokens/s/GPU  "
              f"mfu {m.mfu:.1%}", flush=True)
    elif kind == "checkpoint":
        print(f"[ftd] checkpoint step {event.checkpoint.step}: {event.checkpoint.path}", flush=True)
    elif kind == "eval":
        print(f"[ftd] eval step {event.eval.step}: loss {event.eval.loss:.4f}", flush=True)
    elif kind == "message":
        print(f"[ftd] {event.message}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="job spec: JSON (or YAML with PyYAML), the JobSpec fields")
    ap.add_argument("--request-id", required=True, help="idempotency key: the pipeline run's id")
    ap.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--endpoint", help="HOST:PORT (default: FTD_ENDPOINT or the config file)")
    ap.add_argument("--output-json", help="where to write the result for the next step")
    ap.add_argument("--retry-seconds", type=float, default=60,
                    help="how long to retry while the coordinator is unavailable (restarting)")
    ap.add_argument("--cancel-on-interrupt", action="store_true",
                    help="cancel the job when this step is stopped (SIGTERM, Ctrl-C)")
    args = ap.parse_args()

    labels = dict(kv.split("=", 1) for kv in args.label)
    try:
        client = Client(args.endpoint, retry_seconds=args.retry_seconds)
        spec = load_spec(args.spec)
        plan = client.plan(spec, labels=labels)
        memory = (f"{plan.memory_bytes_per_gpu / 2**30:.1f} GiB per GPU" if plan.memory_bytes_per_gpu
                  else "memory per GPU unknown")
        print(f"[ftd] plan: world size {plan.world_size}, data parallel {plan.data_parallel_size}, "
              f"{memory}", flush=True)
        job = client.create_job(spec, labels=labels, request_id=args.request_id)
    except InvalidArgument as e:
        print(f"[ftd] the job spec was rejected: {e.message}", file=sys.stderr)
        return 2
    except AlreadyExists as e:  # this request id was used for another spec
        print(f"[ftd] {e.message}", file=sys.stderr)
        return 2
    except ftd_client.ConfigError as e:
        print(f"[ftd] {e}", file=sys.stderr)
        return 3
    except FtdError as e:
        print(f"[ftd] {e}", file=sys.stderr)
        return 3
    print(f"[ftd] job {job.id} ({state_name(job.status.state)})", flush=True)

    if args.cancel_on_interrupt:
        def cancel(signum, frame):
            client.cancel_job(job.id, reason=f"pipeline step stopped (signal {signum})")
            print(f"[ftd] cancelled job {job.id}", file=sys.stderr)
            sys.exit(1)
        signal.signal(signal.SIGTERM, cancel)
        signal.signal(signal.SIGINT, cancel)

    final = client.wait(job.id, on_event=progress, resume_seconds=max(args.retry_seconds, 60))
    checkpoints = client.checkpoints(job.id)
    state = state_name(final.status.state)
    result = {"job_id": job.id, "state": state,
              "checkpoints": [{"step": c.step, "path": c.path} for c in checkpoints],
              "final_checkpoint": checkpoints[-1].path if checkpoints else None,
              "metrics": ftd_client.to_dict(final.status.metrics),
              "error": ftd_client.to_dict(final.status.error) or None}
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    print(f"[ftd] job {job.id} {state}" + (f"; final checkpoint {result['final_checkpoint']}"
                                           if result["final_checkpoint"] else ""), flush=True)
    return 0 if state == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
