"""Where the client connects and how it authenticates, resolved as ftctl does: explicit
arguments first, then the environment (FTD_ENDPOINT, FTD_TOKEN, FTD_CA_CERT), then the config
file ($FTD_CONFIG, else $XDG_CONFIG_HOME/ftd/config.yaml or ~/.config/ftd/config.yaml):

    endpoint: ftd.example.com:7070
    token: s3cr3t            # or token_file: ~/.config/ftd/token
    tls: true                # implied by ca_cert
    ca_cert: /etc/ftd/ca.pem
    server_name: ftd.internal
    timeout: 30              # seconds per call

The file is a flat mapping of scalars (ftctl's format); this module reads that subset of YAML
itself so that the package depends on grpcio and protobuf only."""
import dataclasses
import os
import pathlib
from typing import Dict, Optional, Tuple

DEFAULT_ENDPOINT = "127.0.0.1:7070"
DEFAULT_TIMEOUT = 30.0
_KEYS = ("endpoint", "token", "token_file", "tls", "ca_cert", "insecure_skip_verify",
         "server_name", "timeout")


class ConfigError(ValueError):
    """A bad config file, token file or connection setting; the message names it."""


@dataclasses.dataclass
class ClientOptions:
    endpoint: str = ""
    token: str = ""
    tls: bool = False
    ca_cert: str = ""
    server_name: str = ""
    timeout: float = DEFAULT_TIMEOUT
    config_used: str = ""  # the config file that was read, if any


def default_config_path() -> str:
    if os.environ.get("FTD_CONFIG"):
        return os.environ["FTD_CONFIG"]
    if os.environ.get("XDG_CONFIG_HOME"):
        return os.path.join(os.environ["XDG_CONFIG_HOME"], "ftd", "config.yaml")
    return os.path.join(os.path.expanduser("~"), ".config", "ftd", "config.yaml")


def _unquote(value: str, where: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if value[:1] in "'\"":
        raise ConfigError(f"{where}: unterminated quoted value")
    return value


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def read_config_file(path: str) -> Dict[str, Tuple[str, int]]:
    """key -> (value, line number) of a flat `key: value` YAML file."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    out: Dict[str, Tuple[str, int]] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        where = f"{path}:{n}"
        if line[0] in " \t" or ":" not in line:
            raise ConfigError(f"{where}: expected `key: value` (endpoint, token, ...)")
        key, _, value = line.partition(":")
        key = key.strip()
        if key not in _KEYS:
            raise ConfigError(f"{where}: {key}: unknown key (expected {', '.join(_KEYS)})")
        value = value.strip()
        if value in ("", "|", ">") or value[:1] in "[{":
            raise ConfigError(f"{where}: {key}: expected a single value")
        out[key] = (_unquote(value, where), n)
    return out


def _as_bool(value: str, where: str, key: str) -> bool:
    v = value.lower()
    if v in ("true", "yes", "on"):
        return True
    if v in ("false", "no", "off"):
        return False
    raise ConfigError(f"{where}: {key}: expected true or false")


def resolve(endpoint: Optional[str] = None, token: Optional[str] = None,
            token_file: Optional[str] = None, tls: Optional[bool] = None,
            ca_cert: Optional[str] = None, server_name: Optional[str] = None,
            timeout: Optional[float] = None, config_file: Optional[str] = None) -> ClientOptions:
    """Arguments, then environment, then config file; raises ConfigError naming the problem."""
    o = ClientOptions()
    o.endpoint = endpoint or os.environ.get("FTD_ENDPOINT", "")
    o.token = token or ("" if token_file else os.environ.get("FTD_TOKEN", ""))
    o.ca_cert = ca_cert or os.environ.get("FTD_CA_CERT", "")
    o.server_name = server_name or ""
    o.tls = bool(tls)
    token_file = token_file or ""
    timeout_s = timeout or 0.0

    explicit = bool(config_file or os.environ.get("FTD_CONFIG"))
    path = os.path.expanduser(config_file or default_config_path())
    if explicit or os.path.exists(path):
        o.config_used = path
        for key, (value, line) in read_config_file(path).items():
            where = f"{path}:{line}"
            if key == "endpoint" and not o.endpoint:
                o.endpoint = value
            elif key == "token" and not o.token and not token_file:
                o.token = value
            elif key == "token_file" and not o.token and not token_file:
                token_file = os.path.expanduser(value)
            elif key == "ca_cert" and not o.ca_cert:
                o.ca_cert = os.path.expanduser(value)
            elif key == "tls" and tls is None:
                o.tls = _as_bool(value, where, key)
            elif key == "server_name" and not o.server_name:
                o.server_name = value
            elif key == "insecure_skip_verify" and _as_bool(value, where, key):
                raise ConfigError(f"{where}: insecure_skip_verify: not supported by the Python "
                                  "client (grpcio always verifies the certificate); set ca_cert "
                                  "to the CA that signed the coordinator's certificate")
            elif key == "timeout" and not timeout_s:
                try:
                    timeout_s = float(value)
                except ValueError:
                    timeout_s = -1.0
                if timeout_s <= 0:
                    raise ConfigError(f"{where}: timeout: expected a positive number of seconds")

    if token_file and not o.token:
        try:
            o.token = pathlib.Path(os.path.expanduser(token_file)).read_text().strip()
        except OSError as e:
            raise ConfigError(f"{token_file}: cannot read the token file ({e.strerror})") from None

    ep = o.endpoint or DEFAULT_ENDPOINT
    if ep.startswith("https://"):
        o.tls, ep = True, ep[len("https://"):]
    for scheme in ("http://", "grpc://"):
        if ep.startswith(scheme):
            ep = ep[len(scheme):]
    ep = ep.rstrip("/")
    if not ep or ep.endswith(":") or (":" not in ep and not ep.startswith("unix:")):
        raise ConfigError(f'endpoint "{ep}": expected HOST:PORT')
    o.endpoint = ep
    if o.ca_cert:
        o.tls = True
    o.timeout = timeout_s if timeout_s > 0 else DEFAULT_TIMEOUT
    return o
