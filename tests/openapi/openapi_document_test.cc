// The OpenAPI document builder: routes from the google.api.http annotations, schemas in the
// protobuf JSON mapping, comments as descriptions, and refusal of what the gateway cannot serve.
#include "proto/openapi/openapi_document.h"

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ftd/v1/jobs.pb.h"
#include "ftd/v1/worker.pb.h"
#include "google/api/annotations.pb.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace ftd::openapi {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

const google::protobuf::FileDescriptor* GeneratedFile(const std::string& name) {
  const google::protobuf::FileDescriptor* f =
      google::protobuf::DescriptorPool::generated_pool()->FindFileByName(name);
  EXPECT_NE(f, nullptr) << name;
  return f;
}

// The document of the linked-in (generated) descriptors: structure without comments.
Json GeneratedDocument() {
  ftd::v1::JobSpec force_link_jobs;
  ftd::v1::LogLine force_link_worker;
  OpenApiOptions options;
  options.version = "test";
  options.files = {GeneratedFile("ftd/v1/jobs.proto"), GeneratedFile("ftd/v1/worker.proto")};
  absl::StatusOr<Json> doc = BuildOpenApiDocument(options);
  EXPECT_TRUE(doc.ok()) << doc.status();
  return doc.ok() ? *doc : Json();
}

const Json& Schema(const Json& doc, const std::string& name) {
  return doc["components"]["schemas"][name];
}

TEST(OpenApiDocument, EveryAnnotatedMethodIsAnOperationOnItsRoute) {
  const Json doc = GeneratedDocument();
  EXPECT_EQ(doc["openapi"], "3.1.0");
  const google::protobuf::ServiceDescriptor* service =
      GeneratedFile("ftd/v1/jobs.proto")->FindServiceByName("JobService");
  ASSERT_NE(service, nullptr);
  int annotated = 0;
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodOptions& o = service->method(i)->options();
    if (!o.HasExtension(google::api::http)) continue;
    ++annotated;
    const google::api::HttpRule& rule = o.GetExtension(google::api::http);
    const std::string verb = rule.has_get() ? "get" : "post";
    const std::string path = rule.has_get() ? rule.get() : rule.post();
    ASSERT_TRUE(doc["paths"].contains(path)) << path;
    ASSERT_TRUE(doc["paths"][path].contains(verb)) << verb << " " << path;
    EXPECT_EQ(doc["paths"][path][verb]["operationId"], service->method(i)->name());
    EXPECT_EQ(doc["paths"][path][verb]["tags"][0], "JobService");
  }
  EXPECT_GE(annotated, 7);
  // The hand-written routes: logs (parameters from StreamLogsRequest) and the service's own.
  const Json& logs = doc["paths"]["/v1/jobs/{id}/logs"]["get"];
  EXPECT_EQ(logs["operationId"], "StreamLogs");
  std::vector<std::string> names;
  for (const Json& p : logs["parameters"]) names.push_back(p["name"]);
  EXPECT_THAT(names, ::testing::ElementsAre("id", "follow", "tail"));
  EXPECT_TRUE(logs["responses"]["200"]["content"].contains("text/plain"));
  for (const char* p : {"/healthz", "/readyz", "/metrics", "/v1/openapi.json"}) {
    ASSERT_TRUE(doc["paths"].contains(p)) << p;
    EXPECT_TRUE(doc["paths"][p]["get"]["security"].empty()) << p << " needs no token";
  }
  EXPECT_EQ(doc["security"][0].begin().key(), "bearerAuth");
  EXPECT_EQ(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
}

TEST(OpenApiDocument, SchemasFollowTheProtobufJsonMapping) {
  const Json doc = GeneratedDocument();
  const Json& spec = Schema(doc, "ftd.v1.JobSpec");
  ASSERT_TRUE(spec.is_object());
  // Every field, by its JSON name.
  const google::protobuf::Descriptor* d = ftd::v1::JobSpec::descriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    EXPECT_TRUE(spec["properties"].contains(d->field(i)->json_name())) << d->field(i)->name();
  }
  EXPECT_TRUE(spec["properties"].contains("baseModel"));
  EXPECT_EQ(spec["properties"]["datasets"]["$ref"], "#/components/schemas/ftd.v1.JobSpec.Datasets");
  const Json& hp = Schema(doc, "ftd.v1.JobSpec.Hyperparameters")["properties"];
  EXPECT_EQ(hp["maxSteps"]["type"], "string");   // int64: a decimal string
  EXPECT_EQ(hp["maxSteps"]["format"], "int64");
  EXPECT_EQ(hp["seed"]["format"], "uint64");
  EXPECT_EQ(hp["epochs"]["type"], "integer");
  EXPECT_EQ(hp["lr"]["anyOf"][0]["type"], "number");
  EXPECT_EQ(hp["lr"]["anyOf"][1]["enum"][0], "NaN");
  const Json& state = Schema(doc, "ftd.v1.JobState");
  EXPECT_EQ(state["type"], "string");
  EXPECT_THAT(state["enum"].dump(), HasSubstr("\"SUCCEEDED\""));
  const Json& job = Schema(doc, "ftd.v1.FineTuneJob")["properties"];
  EXPECT_EQ(job["createTime"]["format"], "date-time");
  EXPECT_EQ(job["labels"]["additionalProperties"]["type"], "string");
  EXPECT_EQ(Schema(doc, "ftd.v1.JobStatus")["properties"]["checkpoints"]["type"], "array");
  // A oneof member says which members exclude it.
  EXPECT_THAT(Schema(doc, "ftd.v1.JobEvent")["properties"]["metrics"]["description"].get<std::string>(),
              HasSubstr("oneof `kind`"));
  // Errors.
  EXPECT_EQ(Schema(doc, "Error")["required"].size(), 3u);
}

TEST(OpenApiDocument, PathFieldsLeaveTheBodyAndQueryTakesTheRest) {
  const Json doc = GeneratedDocument();
  const Json& cancel = doc["paths"]["/v1/jobs/{id}:cancel"]["post"];
  EXPECT_EQ(cancel["parameters"][0]["name"], "id");
  EXPECT_EQ(cancel["parameters"][0]["in"], "path");
  EXPECT_TRUE(cancel["parameters"][0]["required"].get<bool>());
  const Json& body = cancel["requestBody"]["content"]["application/json"]["schema"];
  EXPECT_TRUE(body["properties"].contains("reason"));
  EXPECT_FALSE(body["properties"].contains("id"));
  EXPECT_FALSE(cancel["requestBody"]["required"].get<bool>());
  EXPECT_TRUE(doc["paths"]["/v1/jobs"]["post"]["requestBody"]["required"].get<bool>());
  EXPECT_TRUE(doc["paths"]["/v1/jobs"]["post"]["responses"].contains("409"));

  const Json& list = doc["paths"]["/v1/jobs"]["get"];
  std::map<std::string, Json> params;
  for (const Json& p : list["parameters"]) params[p["name"]] = p;
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params["pageSize"]["schema"]["format"], "int32");
  EXPECT_EQ(params["states"]["schema"]["type"], "array");
  EXPECT_EQ(params["states"]["schema"]["items"]["$ref"], "#/components/schemas/ftd.v1.JobState");
  EXPECT_TRUE(params["states"]["explode"].get<bool>());
  EXPECT_EQ(params["labels"]["in"], "query");
}

TEST(OpenApiDocument, WatchIsAnEventStreamWithItsEventSchema) {
  const Json doc = GeneratedDocument();
  const Json& watch = doc["paths"]["/v1/jobs/{id}:watch"]["get"];
  const Json& ok = watch["responses"]["200"];
  ASSERT_TRUE(ok["content"].contains("text/event-stream"));
  EXPECT_EQ(ok["content"]["text/event-stream"]["x-ftd-event-data"]["$ref"],
            "#/components/schemas/ftd.v1.JobEvent");
  EXPECT_THAT(ok["description"].get<std::string>(),
              HasSubstr("event: status|metrics|message|checkpoint|eval"));
  bool last_event_id = false;
  for (const Json& p : watch["parameters"]) last_event_id |= p["name"] == "Last-Event-ID";
  EXPECT_TRUE(last_event_id);
}

TEST(OpenApiDocument, ProtoCommentsBecomeDescriptions) {
  // The build's descriptor set keeps the comments (protoc --include_source_info).
  std::ifstream in(FTD_API_DESCRIPTOR_SET, std::ios::binary);
  ASSERT_TRUE(in) << FTD_API_DESCRIPTOR_SET;
  std::stringstream bytes;
  bytes << in.rdbuf();
  google::protobuf::FileDescriptorSet set;
  ASSERT_TRUE(set.ParseFromString(bytes.str()));
  google::protobuf::DescriptorPool pool;
  OpenApiOptions options;
  for (const auto& file : set.file()) {
    const google::protobuf::FileDescriptor* built = pool.BuildFile(file);
    ASSERT_NE(built, nullptr) << file.name();
    if (file.name().rfind("ftd/", 0) == 0) options.files.push_back(built);
  }
  absl::StatusOr<Json> doc = BuildOpenApiDocument(options);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_THAT(Schema(*doc, "ftd.v1.JobSpec")["properties"]["baseModel"]["description"].get<std::string>(),
              HasSubstr("Base model"));
  EXPECT_THAT(Schema(*doc, "ftd.v1.JobSpec")["description"].get<std::string>(),
              HasSubstr("What to train"));
  const Json& list = (*doc)["paths"]["/v1/jobs"]["get"];
  for (const Json& p : list["parameters"]) {
    if (p["name"] == "pageSize") EXPECT_THAT(p["description"].get<std::string>(), HasSubstr("At most 500"));
  }
  EXPECT_THAT((*doc)["paths"]["/v1/jobs/{id}:watch"]["get"]["description"].get<std::string>(),
              HasSubstr("gRPC: `ftd.v1.JobService/WatchJob`"));
}

// A one-method service in a pool of its own, annotated with `rule`.
absl::StatusOr<Json> DocumentOfRule(const google::api::HttpRule& rule,
                                    google::protobuf::DescriptorPool* pool) {
  google::protobuf::FileDescriptorProto proto;
  google::protobuf::Timestamp::descriptor()->file()->CopyTo(&proto);
  pool->BuildFile(proto);
  google::protobuf::FileDescriptorProto file;
  file.set_name("t/test.proto");
  file.set_package("t");
  file.set_syntax("proto3");
  file.add_dependency("google/protobuf/timestamp.proto");
  auto* request = file.add_message_type();
  request->set_name("Req");
  auto* id = request->add_field();
  id->set_name("id");
  id->set_number(1);
  id->set_json_name("id");
  id->set_type(google::protobuf::FieldDescriptorProto::TYPE_STRING);
  id->set_label(google::protobuf::FieldDescriptorProto::LABEL_OPTIONAL);
  auto* service = file.add_service();
  service->set_name("S");
  auto* method = service->add_method();
  method->set_name("Do");
  method->set_input_type(".t.Req");
  method->set_output_type(".t.Req");
  *method->mutable_options()->MutableExtension(google::api::http) = rule;
  const google::protobuf::FileDescriptor* built = pool->BuildFile(file);
  if (built == nullptr) return absl::InternalError("cannot build the test file");
  OpenApiOptions options;
  options.files = {built};
  return BuildOpenApiDocument(options);
}

TEST(OpenApiDocument, RefusesWhatTheGatewayWouldNotServe) {
  {
    google::protobuf::DescriptorPool pool;
    google::api::HttpRule rule;
    rule.set_get("/v1/{id=things/*}");
    absl::StatusOr<Json> doc = DocumentOfRule(rule, &pool);
    ASSERT_FALSE(doc.ok());
    EXPECT_EQ(doc.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(doc.status().message(), HasSubstr("t.S.Do"));
  }
  {
    google::protobuf::DescriptorPool pool;
    google::api::HttpRule rule;
    rule.set_get("/v1/{name}");
    absl::StatusOr<Json> doc = DocumentOfRule(rule, &pool);
    ASSERT_FALSE(doc.ok());
    EXPECT_THAT(doc.status().message(), HasSubstr("path variable `name`"));
  }
  {
    google::protobuf::DescriptorPool pool;
    google::api::HttpRule rule;
    rule.set_post("/v1/things");
    rule.set_body("missing");
    absl::StatusOr<Json> doc = DocumentOfRule(rule, &pool);
    ASSERT_FALSE(doc.ok());
    EXPECT_THAT(doc.status().message(), HasSubstr("body `missing`"));
  }
  {
    google::protobuf::DescriptorPool pool;
    google::api::HttpRule rule;
    rule.set_post("/v1/things/{id}:go");
    rule.set_body("*");
    absl::StatusOr<Json> doc = DocumentOfRule(rule, &pool);
    ASSERT_TRUE(doc.ok()) << doc.status();
    EXPECT_EQ((*doc)["paths"]["/v1/things/{id}:go"]["post"]["operationId"], "Do");
  }
}

}  // namespace
}  // namespace ftd::openapi
