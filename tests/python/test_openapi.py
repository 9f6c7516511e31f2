"""The OpenAPI document of the REST API: generated from the protos at build time, served by a
live coordinator at GET /v1/openapi.json, valid OpenAPI 3.1, in step with the .proto files (an
edit to a proto that the document does not follow fails here), and a property-based fuzz of
the live API from it (schemathesis): over 1,000 generated requests, no 5xx, no crash."""
import collections
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, binary, build_dir, run
from coordinator_util import USER, LocalCoordinator

PROTO_DIR = ROOT / "proto"
HTTP_RULE_FIELD = 72295728  # (google.api.http) on MethodOptions
VERBS = {2: "get", 3: "put", 4: "post", 5: "delete", 6: "patch"}  # HttpRule's pattern fields


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    if not binary("ftd").exists():
        pytest.skip(f"{binary('ftd')} is not built")
    c = LocalCoordinator(tmp_path_factory.mktemp("openapi")).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def served(coordinator):
    import urllib.request
    with urllib.request.urlopen(coordinator.url + "/v1/openapi.json", timeout=30) as resp:  # no token
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        return resp.read()


def cmake_cache(name):
    cache = (build_dir() / "CMakeCache.txt").read_text()
    m = re.search(rf"^{name}:[A-Z]+=(.*)$", cache, re.M)
    assert m, f"{name} is not in {build_dir() / 'CMakeCache.txt'}"
    return m.group(1)


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory):
    """protoc's descriptor set of the .proto files as they are in the source tree now."""
    out = tmp_path_factory.mktemp("desc") / "api.desc"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    run([cmake_cache("Protobuf_PROTOC_EXECUTABLE"), "--include_imports", "--include_source_info",
         f"--descriptor_set_out={out}", f"-I{PROTO_DIR}", f"-I{cmake_cache('FTD_GOOGLEAPIS_DIR')}", *protos],
        cwd=PROTO_DIR)
    return out


def test_served_document_is_valid_openapi_31_and_the_build_artifact(served):
    from openapi_spec_validator import OpenAPIV31SpecValidator, validate

    doc = json.loads(served)
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["openapi"] == "3.1.0"
    # The file the container image ships is the one the coordinator serves.
    assert (build_dir() / "openapi.json").read_bytes() == served
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]}
    assert doc["security"] == [{"bearerAuth": []}]
    watch = doc["paths"]["/v1/jobs/{id}:watch"]["get"]["responses"]["200"]["content"]
    assert list(watch) == ["text/event-stream"]
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "status", "message"]


def test_served_document_is_what_the_current_protos_generate(served, descriptor_set, tmp_path):
    """Regenerated from proto/ as it is now: a proto edited without rebuilding, or a document
    generated from anything but the protos, differs."""
    out = tmp_path / "openapi.json"
    run([binary("ftd-openapi-gen"), "--descriptor-set", descriptor_set, "--out", out])
    assert out.read_bytes() == served, "the served OpenAPI document is stale: rebuild ftd"


def _length_delimited(data):
    """(field number, bytes) of the length-delimited fields of a serialized message."""
    i, out = 0, []

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value
    while i < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            n = varint()
            out.append((field, data[i:i + n]))
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def test_document_covers_every_route_message_field_and_enum_value_of_the_protos(served, descriptor_set):
    """Read independently of the generator (Python protobuf over protoc's output)."""
    from google.protobuf import descriptor_pb2

    doc = json.loads(served)
    schemas = doc["components"]["schemas"]
    files = [f for f in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
             if f.name.startswith("ftd/")]
    messages, enums = {}, {}

    def collect(prefix, message):
        messages[f"{prefix}.{message.name}"] = message
        for nested in message.nested_type:
            if not nested.options.map_entry:
                collect(f"{prefix}.{message.name}", nested)
        for e in message.enum_type:
            enums[f"{prefix}.{message.name}.{e.name}"] = e
    for f in files:
        for m in f.message_type:
            collect(f.package, m)
        for e in f.enum_type:
            enums[f"{f.package}.{e.name}"] = e

    # Every annotated method is an operation on its route, with its parameters.
    routes = 0
    for f in files:
        for service in f.service:
            for method in service.method:
                rules = [v for k, v in _length_delimited(method.options.SerializeToString()) if k == HTTP_RULE_FIELD]
                if not rules:
                    continue
                rule = dict(_length_delimited(rules[0]))
                verb = next(VERBS[k] for k in VERBS if k in rule)
                path, body = rule[next(k for k in VERBS if k in rule)].decode(), rule.get(7, b"").decode()
                op = doc["paths"][path][verb]
                assert op["operationId"] == method.name
                request = messages[method.input_type.lstrip(".")]
                named = {p["name"] for p in op.get("parameters", []) if p["in"] in ("path", "query")}
                if body == "*":
                    content = op["requestBody"]["content"]["application/json"]["schema"]
                    if "$ref" in content:
                        content = schemas[content["$ref"].split("/")[-1]]
                    named |= set(content["properties"])
                for field in request.field:
                    if field.type != field.TYPE_MESSAGE or body == "*":
                        assert field.json_name in named, f"{method.name}: {field.name} has no parameter"
                if not method.server_streaming:
                    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                    assert ok.endswith("/" + method.output_type.lstrip("."))
                routes += 1
    assert routes >= 7

    # Every message the API reaches has every field under its JSON name; every enum, every value.
    described = [n for n in messages if n in schemas]
    assert {"ftd.v1.JobSpec", "ftd.v1.FineTuneJob", "ftd.v1.JobEvent", "ftd.v1.JobMetrics"} <= set(described)
    for name in described:
        props = schemas[name]["properties"]
        assert set(props) == {f.json_name for f in messages[name].field}, name
        for f in messages[name].field:
            if f.type == f.TYPE_MESSAGE and f.type_name.lstrip(".") in messages and f.label != f.LABEL_REPEATED:
                assert props[f.json_name]["$ref"].endswith("/" + f.type_name.lstrip(".")), (name, f.name)
    for name, enum in enums.items():
        if name in schemas:
            assert schemas[name]["enum"] == [v.name for v in enum.value], name
    assert "ftd.v1.JobState" in schemas


def _schemathesis(coordinator, report_dir, *extra):
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{coordinator.url}/v1/openapi.json",
           "-H", f"Authorization: Bearer {USER}",
           # Every check but two that judge the server by what the document cannot say: that a
           # job id is [A-Za-z0-9_-]{1,64} or a page size not negative (positive_data_acceptance),
           # and that civetweb answers TRACE itself with 400, before any handler runs.
           "--checks", "all", "--exclude-checks", "positive_data_acceptance,unsupported_method",
           # Deterministic: a fixed seed, one worker, no example database, no timing-based
           # health checks (CI's cores are shared).
           "--seed", "26", "--workers", "1", "--generation-database", "none",
           "--suppress-health-check", "all", "--request-timeout", "60", "--no-color",
           "--report", "har", "--report-dir", str(report_dir), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=report_dir.parent, timeout=600)
    assert res.returncode == 0, f"schemathesis found failures:\n{res.stdout[-8000:]}\n{res.stderr[-2000:]}"
    (har,) = report_dir.glob("*.json")
    return json.loads(har.read_text())["log"]["entries"], res.stdout


def test_schemathesis_fuzz_of_the_live_api_finds_no_server_error(coordinator, tmp_path):
    # Streams first, while no job exists: every id is unknown, so no stream stays open. Then the
    # rest, CreateJob included (a job it manages to create stays QUEUED: there is no worker).
    streams, out1 = _schemathesis(coordinator, tmp_path / "streams", "--max-examples", "120",
                                  "--include-operation-id", "WatchJob", "--include-operation-id", "StreamLogs")
    rest, out2 = _schemathesis(coordinator, tmp_path / "rest", "--max-examples", "60",
                               "--exclude-operation-id", "WatchJob", "--exclude-operation-id", "StreamLogs")
    entries = streams + rest
    statuses = collections.Counter(e["response"]["status"] for e in entries)
    print(f"schemathesis: {len(entries)} requests, statuses {sorted(statuses.items())}")
    print(out2[out2.find("SUMMARY"):])
    assert len(entries) >= 1000, statuses
    server_errors = [(e["request"]["method"], e["request"]["url"], e["response"]["status"])
                     for e in entries if e["response"]["status"] >= 500 or e["response"]["status"] == 0]
    assert not server_errors, server_errors[:20]
    # Every operation was exercised, and valid requests were among them.
    paths = {re.sub(r"/v1/jobs/[^/?]+?(?=(:|/|$|\?))", "/v1/jobs/{id}", e["request"]["url"].split("?")[0])
             for e in entries}
    assert {f"{coordinator.url}{p}" for p in ("/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}:cancel", "/v1/jobs/{id}:watch",
                                              "/v1/jobs/{id}/events", "/v1/jobs/{id}/checkpoints",
                                              "/v1/jobs/{id}/logs", "/healthz")} <= paths, paths
    assert statuses[200] > 50 and statuses[400] > 100 and statuses[401] > 0
    # The coordinator is still up and serving.
    assert coordinator.alive(), coordinator.log_tail()
    assert coordinator.call("GET", "/readyz", token=None)[0] == 200
    assert coordinator.call("GET", "/v1/jobs")[0] == 200


def test_container_image_ships_the_document():
    from test_deploy import DOCKERFILE, parse_dockerfile, stages

    (_, _, builder), (_, _, runtime) = stages(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "cp build/openapi.json /opt/ftd/share/openapi.json" in runs
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=builder /opt/ftd/share/openapi.json /usr/share/ftd/openapi.json" in copies
    # What the builder copies is what a build makes.
    assert "FTD_OPENAPI_JSON ${CMAKE_BINARY_DIR}/openapi.json" in (ROOT / "proto/openapi/CMakeLists.txt").read_text()
