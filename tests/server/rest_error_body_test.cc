// Error bodies are valid JSON in valid UTF-8 even when the message quotes malformed input
// (found by the schemathesis fuzz of the OpenAPI document: a body of non-UTF-8 bytes came back
// verbatim inside the 400's JSON). And GET /v1/openapi.json serves the build's document.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;

class RestErrorBodyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = server::Daemon::Start(env_.Options());
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }
  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
};

TEST_F(RestErrorBodyTest, MalformedUtf8InTheRequestGivesValidJsonInTheError) {
  const std::string bodies[] = {
      std::string("\x02\xd3\xb9K\xcdYxRm", 9),  // stray bytes, a cut sequence
      "{\"reason\":\"\xff\"}",                   // a byte that never starts UTF-8
      "{\"reason\":\"\xed\xa0\x80\"}",           // an encoded surrogate
      "{\"reason\":\"\xc0\xaf\"}",               // an overlong '/'
  };
  for (const std::string& body : bodies) {
    auto r = HttpCall(daemon_->http_port(), "POST", "/v1/jobs/job-1:cancel", body, kTokenA);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 400) << r->body;
    nlohmann::json error;
    ASSERT_NO_THROW(error = nlohmann::json::parse(r->body)) << r->body;  // throws on bad UTF-8
    EXPECT_EQ(error["status"], "INVALID_ARGUMENT");
    EXPECT_THAT(error["message"].get<std::string>(), HasSubstr("body:"));
  }
  // Well-formed multi-byte text in a message is kept as it is.
  auto r = HttpCall(daemon_->http_port(), "POST", "/v1/jobs/job-1:cancel",
                    "{\"r\xc3\xa9" "ason\":\"x\"}", kTokenA);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_THAT(r->body, HasSubstr("r\xc3\xa9" "ason"));
}

TEST_F(RestErrorBodyTest, OpenApiDocumentIsServedWithoutTokenAndOnlyForGet) {
  auto r = HttpCall(daemon_->http_port(), "GET", "/v1/openapi.json");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->headers["content-type"], "application/json");
  nlohmann::json doc = nlohmann::json::parse(r->body);
  EXPECT_EQ(doc["openapi"], "3.1.0");
  EXPECT_TRUE(doc["paths"].contains("/v1/jobs/{id}:watch"));
  auto post = HttpCall(daemon_->http_port(), "POST", "/v1/openapi.json", "{}");
  ASSERT_TRUE(post.ok());
  EXPECT_EQ(post->status, 405);
}

}  // namespace
}  // namespace ftd::testing
