"""Builds ftd-client: generates the gRPC stubs of ../../proto/ftd/v1/*.proto into the wheel.

The stubs live in ftd_client._pb (not a top-level `ftd` package). The google.api.http
annotations matter only to the REST gateway: they are dropped before code generation, so the
package needs neither googleapis' protos at build time nor googleapis-common-protos at run time.
The .proto files are found in $FTD_PROTO_DIR, ./proto (an sdist) or ../../proto (the repo).
"""
import os
import pathlib
import shutil
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
PREFIX = "ftd_client/_pb/"

# Only for parsing the annotations that are then dropped; field numbers as in googleapis.
GOOGLE_API_STANDIN = """syntax = "proto3";
package google.api;
import "google/protobuf/descriptor.proto";
extend google.protobuf.MethodOptions { HttpRule http = 72295728; }
message HttpRule {
  string selector = 1;
  oneof pattern {
    string get = 2; string put = 3; string post = 4; string delete = 5; string patch = 6;
    CustomHttpPattern custom = 8;
  }
  string body = 7;
  string response_body = 12;
  repeated HttpRule additional_bindings = 11;
}
message CustomHttpPattern { string kind = 1; string path = 2; }
"""


def proto_root() -> pathlib.Path:
    candidates = [os.environ.get("FTD_PROTO_DIR"), HERE / "proto", HERE.parent.parent / "proto"]
    for c in candidates:
        if c and (pathlib.Path(c) / "ftd" / "v1" / "jobs.proto").is_file():
            return pathlib.Path(c)
    sys.exit("ftd-client: ftd/v1/jobs.proto not found in $FTD_PROTO_DIR, ./proto or ../../proto; "
             "build from the ftd repository or set FTD_PROTO_DIR")


def protoc(args):
    import grpc_tools
    from grpc_tools import protoc as grpc_protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = grpc_protoc.main(["protoc", f"-I{include}"] + args)
    if rc != 0:
        sys.exit(f"ftd-client: protoc failed ({rc}): {' '.join(args)}")


def generate_stubs(out_dir: pathlib.Path) -> None:
    from google.protobuf import descriptor_pb2

    root = proto_root()
    protos = sorted(p.relative_to(root).as_posix() for p in (root / "ftd").rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "include" / "google" / "api").mkdir(parents=True)
        (tmp / "include" / "google" / "api" / "annotations.proto").write_text(GOOGLE_API_STANDIN)
        protoc([f"-I{root}", f"-I{tmp / 'include'}", "--include_imports",
                f"--descriptor_set_out={tmp / 'full.pb'}"] + protos)

        full = descriptor_pb2.FileDescriptorSet.FromString((tmp / "full.pb").read_bytes())
        stripped = descriptor_pb2.FileDescriptorSet()
        for f in full.file:
            if f.name.startswith("google/api/"):
                continue
            g = stripped.file.add()
            g.CopyFrom(f)
            if f.name.startswith("google/"):
                continue
            g.name = PREFIX + f.name
            del g.dependency[:]
            for dep in f.dependency:
                if not dep.startswith("google/api/"):
                    g.dependency.append(dep if dep.startswith("google/") else PREFIX + dep)
            del g.public_dependency[:]
            del g.weak_dependency[:]
            for service in g.service:
                for method in service.method:
                    method.options.DiscardUnknownFields()  # (google.api.http)
                    if not method.options.ListFields():
                        method.ClearField("options")
        (tmp / "stripped.pb").write_bytes(stripped.SerializeToString())

        out_dir.mkdir(parents=True, exist_ok=True)
        protoc([f"--descriptor_set_in={tmp / 'stripped.pb'}", f"--python_out={out_dir}",
                f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"] + [PREFIX + p for p in protos])
    for d in {(out_dir / PREFIX / p).parent for p in protos} | {out_dir / PREFIX}:
        while d != out_dir / "ftd_client":
            (d / "__init__.py").touch()
            d = d.parent


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        shutil.rmtree(pathlib.Path(self.build_lib) / PREFIX, ignore_errors=True)  # no stale stubs
        generate_stubs(pathlib.Path(self.build_lib))


class SdistWithProtos(sdist):
    """An sdist carries the .proto files (./proto) so that it builds away from the repo."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for p in root.rglob("*.proto"):
            dst = pathlib.Path(base_dir) / "proto" / p.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst)


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})
