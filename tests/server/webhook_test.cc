// The webhook signature (HMAC-SHA256, RFC 4231 vectors) and HttpPost's errors. Deliveries end
// to end, with a real HTTP receiver, are in tests/python/test_webhooks.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/time.h"
#include "server/webhook_notifier.h"

namespace ftd::server {
namespace {

TEST(WebhookTest, SignatureIsHmacSha256OfTheBody) {
  // RFC 4231, test cases 1 and 2.
  EXPECT_EQ(HmacSha256Hex(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(HmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(WebhookTest, PostErrorsNameTheProblem) {
  auto bad = HttpPost("ftp://example.com/", {}, "{}", absl::Seconds(1), "");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  // Nothing listens on port 1 of loopback: refused, not hung.
  auto refused = HttpPost("http://127.0.0.1:1/hook", {}, "{}", absl::Seconds(5), "");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("cannot connect to 127.0.0.1:1"));
}

}  // namespace
}  // namespace ftd::server
