"""Errors of the ftd client: every failed call raises an FtdError subclass that carries the
gRPC status code and, for validation errors, the field the coordinator named."""
import re
from typing import Dict, Optional, Type

import grpc

# The coordinator starts a validation message with the path of the field it is about:
# "spec.hyperparameters.lr: must be ...", "labels[team]: ...", "page_token: ...".
_FIELD_PREFIX = re.compile(
    r"^((?:[A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?)*): ")
_FIELD_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.OUT_OF_RANGE)


class FtdError(Exception):
    """A call to the coordinator failed.

    code: the grpc.StatusCode; message: the coordinator's message; field: the request field the
    message is about (e.g. "spec.hyperparameters.lr"), or None."""

    def __init__(self, code: grpc.StatusCode, message: str, field: Optional[str] = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field = field


class InvalidArgument(FtdError):
    """The request (a spec field, a label, a page token...) is not valid; see .field."""


class FailedPrecondition(FtdError):
    pass


class OutOfRange(FtdError):
    pass


class NotFound(FtdError):
    """No such job, or a job of another tenant (the coordinator does not tell them apart)."""


class AlreadyExists(FtdError):
    """The request_id was used before for a job with a different spec or labels."""


class PermissionDenied(FtdError):
    pass


class Unauthenticated(FtdError):
    """No token, or one the coordinator does not know."""


class ResourceExhausted(FtdError):
    pass


class Unavailable(FtdError):
    """The coordinator cannot be reached, is starting or is shutting down."""


class DeadlineExceeded(FtdError):
    pass


class Unimplemented(FtdError):
    pass


class Cancelled(FtdError):
    pass


class Internal(FtdError):
    pass


_BY_CODE: Dict[grpc.StatusCode, Type[FtdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
}


def field_of(code: grpc.StatusCode, message: str) -> Optional[str]:
    """The field a validation message names, or None."""
    if code not in _FIELD_CODES:
        return None
    m = _FIELD_PREFIX.match(message)
    return m.group(1) if m else None


def make_error(code: grpc.StatusCode, message: str, field: Optional[str] = None) -> FtdError:
    cls = _BY_CODE.get(code, FtdError)
    return cls(code, message, field if field is not None else field_of(code, message))


def from_rpc_error(e: grpc.RpcError) -> FtdError:
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = e.details() if hasattr(e, "details") else str(e)
    return make_error(code or grpc.StatusCode.UNKNOWN, details or "")
