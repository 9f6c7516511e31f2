"""Client of the ftd coordinator's gRPC JobService and JobLogService."""
import atexit
import random
import re
import time
import uuid
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import grpc
from google.protobuf import json_format

from . import config as _config
from . import errors
from ._pb.ftd.v1 import jobs_pb2, jobs_pb2_grpc, worker_pb2, worker_pb2_grpc

JobSpec = jobs_pb2.JobSpec
FineTuneJob = jobs_pb2.FineTuneJob
JobPlan = jobs_pb2.JobPlan
JobEvent = jobs_pb2.JobEvent
Checkpoint = jobs_pb2.Checkpoint
LogLine = worker_pb2.LogLine
JobState = jobs_pb2.JobState

TERMINAL_STATES = frozenset({jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED})

# A stream that breaks with one of these is resumed (the coordinator restarting, a proxy or
# the network dropping the connection); any other code is the coordinator's answer.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.DEADLINE_EXCEEDED})


def state_name(state: int) -> str:
    """QUEUED, RUNNING, SUCCEEDED, ... for a JobState value."""
    return jobs_pb2.JobState.Name(state)


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


def _to_spec(spec: Union[JobSpec, Mapping[str, Any]]) -> JobSpec:
    if isinstance(spec, JobSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec: expected a JobSpec or a mapping, got {type(spec).__name__}")
    try:
        return json_format.ParseDict(dict(spec), JobSpec())
    except json_format.ParseError as e:
        field = _spec_field_of_parse_error(str(e))
        message = str(e).split("\n")[0]
        raise errors.make_error(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field) from None


def _spec_field_of_parse_error(text: str) -> str:
    """The spec field a json_format.ParseError is about, by proto names as the coordinator
    names fields: 'Failed to parse hyperparameters field: Failed to parse maxSteps field: ...'
    or '... has no field named "lrr" at "JobSpec.hyperparameters"'."""
    names = re.findall(r"Failed to parse (\w+) field", text)
    unknown = re.search(r'no field named "([^"]+)"', text)
    if unknown:
        names.append(unknown.group(1))
    path, message = ["spec"], JobSpec.DESCRIPTOR
    for name in names:
        f = None
        if message is not None:
            f = message.fields_by_name.get(name) or next(
                (x for x in message.fields if x.json_name == name), None)
        path.append(f.name if f is not None else name)
        message = f.message_type if f is not None else None
    return ".".join(path)


def _label_selectors(labels: Union[None, Mapping[str, str], Iterable[str]]) -> List[str]:
    if labels is None:
        return []
    if isinstance(labels, Mapping):
        return [f"{k}={v}" for k, v in labels.items()]
    return list(labels)


# Clients not closed by their program are closed at exit, while gRPC's threads still run: left
# to the interpreter's final garbage collection, a finished call's __del__ can wait forever for a
# lock that a gRPC thread, stopped mid-way at shutdown, still holds (seen: a script that had
# printed its last line never exited).
_OPEN_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_OPEN_CLIENTS):
        client.close()


class Client:
    """A connection to one coordinator.

        client = Client("ftd.example.com:7070", token="...", tls=True)
        job = client.create_job({"base_model": "/models/qwen3", ...}, request_id="run-42")
        for event in client.watch(job.id):
            ...

    Unset arguments come from the environment and the config file as ftctl reads them (see
    ftd_client.config). Every call raises an ftd_client.errors.FtdError subclass on failure.
    Unary calls are retried on UNAVAILABLE for up to `retry_seconds` (create_job too: its
    request_id makes a retry return the job the first attempt created). A connection that died
    without closing (a vanished coordinator, a NAT that dropped the flow) is noticed after
    about `keepalive_seconds` plus 10 s of silence, and a watch then resumes (at least 10:
    ftd refuses pings much closer together)."""

    def __init__(self, endpoint: Optional[str] = None, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls: Optional[bool] = None,
                 ca_cert: Optional[str] = None, server_name: Optional[str] = None,
                 timeout: Optional[float] = None, config_file: Optional[str] = None,
                 retry_seconds: float = 20.0, keepalive_seconds: float = 30.0):
        self.options = _config.resolve(endpoint=endpoint, token=token, token_file=token_file,
                                       tls=tls, ca_cert=ca_cert, server_name=server_name,
                                       timeout=timeout, config_file=config_file)
        self.retry_seconds = retry_seconds
        if not keepalive_seconds >= 10:
            raise ValueError(f"keepalive_seconds: must be at least 10 (ftd refuses pings closer "
                             f"together), got {keepalive_seconds}")
        channel_options = [
            ("grpc.max_receive_message_length", 64 << 20),
            # Reconnect soon after a coordinator restart (gRPC's default backoff reaches 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # Notice a connection that died without closing (watch streams stay quiet for long).
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            # gRPC otherwise stops pinging after 2 pings with no data sent (a watch sends none
            # after its request), and gives its other pings (bandwidth probes, which delay the
            # keepalive ones) a minute to be answered.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.ping_timeout_ms", 10_000),
        ]
        o = self.options
        if o.tls:
            root = None
            if o.ca_cert:
                try:
                    with open(o.ca_cert, "rb") as f:
                        root = f.read()
                except OSError as e:
                    raise _config.ConfigError(f"ca_cert {o.ca_cert}: cannot read the file ({e.strerror})") from None
                if b"-----BEGIN CERTIFICATE-----" not in root:
                    raise _config.ConfigError(f"ca_cert {o.ca_cert}: not a PEM certificate")
            if o.server_name:
                channel_options.append(("grpc.ssl_target_name_override", o.server_name))
            self._channel = grpc.secure_channel(o.endpoint, grpc.ssl_channel_credentials(root),
                                                options=channel_options)
        else:
            self._channel = grpc.insecure_channel(o.endpoint, options=channel_options)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._logs = worker_pb2_grpc.JobLogServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {o.token}"),) if o.token else ()
        _OPEN_CLIENTS.add(self)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        _OPEN_CLIENTS.discard(self)
        self._channel.close()

    def __del__(self) -> None:
        # gRPC does not close a channel when it is freed; a client dropped without close()
        # closes it here, while gRPC's threads still run.
        channel = getattr(self, "_channel", None)
        if channel is not None:
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - nothing to report from a finaliser
                pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        return self.options.endpoint

    # -- calls ----------------------------------------------------------------------------

    def _error(self, e: grpc.RpcError) -> errors.FtdError:
        err = errors.from_rpc_error(e)
        if err.code == grpc.StatusCode.UNAVAILABLE:
            err.args = (f"UNAVAILABLE: cannot reach the coordinator at {self.endpoint}: {err.message}",)
        elif err.code == grpc.StatusCode.UNAUTHENTICATED:
            hint = ("no token was given (token=, FTD_TOKEN or token: in the config file)"
                    if not self._metadata else "check the token")
            err.args = (f"UNAUTHENTICATED: {err.message} ({hint})",)
        return err

    def _unary(self, rpc: Callable, request):
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            try:
                return rpc(request, timeout=self.options.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise self._error(e) from None
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def create_job(self, spec: Union[JobSpec, Mapping[str, Any]], *,
                   labels: Optional[Mapping[str, str]] = None, request_id: Optional[str] = None) -> FineTuneJob:
        """Submits a job. The same request_id with the same spec and labels returns the job the
        first call created (AlreadyExists when they differ): give the pipeline run's id to make
        a retried step idempotent. Without one, a fresh id is used for this call's retries."""
        request = jobs_pb2.CreateJobRequest(spec=_to_spec(spec), labels=dict(labels or {}),
                                            request_id=request_id or f"py-{uuid.uuid4().hex}")
        return self._unary(self._jobs.CreateJob, request).job

    def plan(self, spec: Union[JobSpec, Mapping[str, Any]], *,
             labels: Optional[Mapping[str, str]] = None) -> JobPlan:
        """Validates the spec (paths, datasets, limits) and returns its plan: world size,
        data-parallel size, accumulation steps, parameters and memory per GPU. Stores nothing."""
        request = jobs_pb2.CreateJobRequest(spec=_to_spec(spec), labels=dict(labels or {}),
                                            validate_only=True)
        return self._unary(self._jobs.CreateJob, request).plan

    def get_job(self, job_id: str) -> FineTuneJob:
        return self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(id=job_id))

    def list_jobs(self, *, states: Iterable[Union[int, str]] = (),
                  labels: Union[None, Mapping[str, str], Iterable[str]] = None,
                  page_size: int = 0) -> Iterator[FineTuneJob]:
        """Every visible job (newest first), fetched page by page; `states` by value or name,
        `labels` as {key: value} or ["key=value"], all of which must match."""
        state_values = []
        for i, s in enumerate(states):
            if isinstance(s, str) and s not in jobs_pb2.JobState.keys():
                raise errors.make_error(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"states[{i}]: not a job state: {s!r} (one of "
                                        f"{', '.join(jobs_pb2.JobState.keys()[1:])})", f"states[{i}]")
            state_values.append(jobs_pb2.JobState.Value(s) if isinstance(s, str) else s)
        token = ""
        while True:
            page = self._unary(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(
                page_size=page_size, page_token=token, states=state_values,
                labels=_label_selectors(labels)))
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str, reason: str = "") -> FineTuneJob:
        return self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id, reason=reason))

    def checkpoints(self, job_id: str) -> List[Checkpoint]:
        return list(self._unary(self._jobs.ListCheckpoints,
                                jobs_pb2.ListCheckpointsRequest(id=job_id)).checkpoints)

    def events(self, job_id: str, page_size: int = 0) -> Iterator[JobEvent]:
        """The job's stored events from the first, page by page."""
        token = ""
        while True:
            page = self._unary(self._jobs.ListJobEvents, jobs_pb2.ListJobEventsRequest(
                id=job_id, page_size=page_size, page_token=token))
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def watch(self, job_id: str, after_seq: int = 0, *, resume: bool = True,
              resume_seconds: float = 600.0,
              on_reconnect: Optional[Callable[[int, errors.FtdError], None]] = None) -> Iterator[JobEvent]:
        """The job's events as they happen, ending after its terminal status event.

        after_seq=0 starts from the current state (the latest status event); N > 0 replays
        every event after N first. When the stream breaks (a coordinator restart, a dropped
        connection), it is reopened after the last event received, so that no event is lost
        or repeated; `on_reconnect(last_seq, error)` is told each time. Gives up (raising
        Unavailable) when no stream could be reopened for `resume_seconds`."""
        last_seq = after_seq
        broken_since: Optional[float] = None
        delay = 0.2
        while True:
            call = self._jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job_id, after_seq=last_seq),
                                       metadata=self._metadata)
            try:
                for event in call:
                    broken_since, delay = None, 0.2
                    if event.seq <= last_seq:
                        continue  # already delivered before a reconnect
                    last_seq = event.seq
                    yield event
                    if event.WhichOneof("kind") == "status" and is_terminal(event.status.state):
                        return
                # The stream ended without the terminal event (e.g. a graceful shutdown).
                error = errors.make_error(grpc.StatusCode.UNAVAILABLE, "the watch stream ended early")
            except grpc.RpcError as e:
                # The broken call raised itself: its traceback holds frames that hold it. Cut
                # that cycle so the call is freed here, not by a later garbage collection (see
                # _OPEN_CLIENTS).
                e.__traceback__ = None
                error = self._error(e)
                if not resume or error.code not in _RESUMABLE:
                    raise error from None
            finally:
                call.cancel()
            if not resume:
                raise error
            now = time.monotonic()
            broken_since = broken_since or now
            if now - broken_since > resume_seconds:
                raise error
            if on_reconnect is not None:
                on_reconnect(last_seq, error)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def wait(self, job_id: str, *, on_event: Optional[Callable[[JobEvent], None]] = None,
             resume_seconds: float = 600.0) -> FineTuneJob:
        """Watches until the job ends and returns it (check .status.state)."""
        job = self.get_job(job_id)
        if not is_terminal(job.status.state):
            for event in self.watch(job_id, resume_seconds=resume_seconds):
                if on_event is not None:
                    on_event(event)
        return self.get_job(job_id)

    def logs(self, job_id: str, *, follow: bool = False, tail: int = 0,
             rank: Optional[int] = None) -> Iterator[LogLine]:
        """The ranks' output lines as buffered by the coordinator (the last `tail` only, when
        set); with follow, new lines until the job ends. `rank` keeps one rank's lines."""
        call = self._logs.StreamLogs(worker_pb2.StreamLogsRequest(id=job_id, follow=follow, tail=tail),
                                     metadata=self._metadata)
        try:
            for line in call:
                if rank is None or line.rank == rank:
                    yield line
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()


def to_dict(message) -> Dict[str, Any]:
    """A result as the protobuf JSON mapping writes it (as the REST API returns it)."""
    return json_format.MessageToDict(message)
