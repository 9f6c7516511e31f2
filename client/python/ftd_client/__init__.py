"""ftd-client: submit, watch and inspect ftd fine-tuning jobs from Python (pipelines, notebooks).

    from ftd_client import Client
    with Client() as client:          # FTD_ENDPOINT / FTD_TOKEN / ~/.config/ftd/config.yaml
        job = client.create_job(spec, request_id="pipeline-run-42")
        final = client.wait(job.id)
"""
from .client import (TERMINAL_STATES, Checkpoint, Client, FineTuneJob, JobEvent, JobPlan, JobSpec,
                     JobState, LogLine, is_terminal, state_name, to_dict)
from .config import ClientOptions, ConfigError
from .errors import (AlreadyExists, Cancelled, DeadlineExceeded, FailedPrecondition, FtdError,
                     Internal, InvalidArgument, NotFound, OutOfRange, PermissionDenied,
                     ResourceExhausted, Unauthenticated, Unavailable, Unimplemented)
from ._pb.ftd.v1 import jobs_pb2, worker_pb2

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists", "Cancelled", "Checkpoint", "Client", "ClientOptions", "ConfigError",
    "DeadlineExceeded", "FailedPrecondition", "FineTuneJob", "FtdError", "Internal",
    "InvalidArgument", "JobEvent", "JobPlan", "JobSpec", "JobState", "LogLine", "NotFound",
    "OutOfRange", "PermissionDenied", "ResourceExhausted", "TERMINAL_STATES", "Unauthenticated",
    "Unavailable", "Unimplemented", "is_terminal", "jobs_pb2", "state_name", "to_dict",
    "worker_pb2",
]
