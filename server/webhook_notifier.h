// WebhookNotifier: when a job whose spec names webhook_url reaches a terminal state, POSTs the
// job (its JSON, as GET /v1/jobs/{id} returns it) to that URL from a thread of its own, so the
// scheduler never waits on a receiver.
//
// - Signature: header `X-Ftd-Signature-256: sha256=<hex HMAC-SHA256 of the body>` under the
//   job's tenant's secret (--webhook-secrets: `TENANT SECRET` per line). Also `X-Ftd-Event`
//   (job.succeeded | job.failed | job.cancelled), `X-Ftd-Job` and `X-Ftd-Delivery` (the same for
//   every attempt of one delivery).
// - Destinations: only hosts of the operator's allow-list (--webhook-allow, checked when the job
//   is created and again before each attempt); redirects are not followed.
// - Retries: connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff
//   (initial_backoff doubling up to max_backoff) up to max_attempts; other statuses are final.
// - Each attempt's outcome is a message event of the job ("webhook: ...").
// Deliveries pending when the coordinator stops are not resumed by the next one.
#pragma once

#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/spec_validator.h"

namespace ftd::server {

struct WebhookOptions {
  std::string secrets_file;  // `TENANT SECRET` per line, `#` comments; empty: no tenant has one
  int max_attempts = 6;
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(1);
  absl::Duration timeout = absl::Seconds(10);  // per attempt: connect, TLS, request, status line
  std::string ca_file;  // https: trust these CAs instead of the system's (tests, private CAs)
};

// Lower-case hex HMAC-SHA256 of `data` under `key`.
std::string HmacSha256Hex(absl::string_view key, absl::string_view data);

// One POST of `body` to an http:// or https:// `url` (no redirects); the HTTP status, or
// UNAVAILABLE / DEADLINE_EXCEEDED for connection, TLS and timeout errors.
absl::StatusOr<int> HttpPost(const std::string& url, const std::vector<std::pair<std::string, std::string>>& headers,
                             const std::string& body, absl::Duration timeout, const std::string& ca_file);

class WebhookNotifier {
 public:
  // Reads the secrets file (INVALID_ARGUMENT naming its line when malformed) and subscribes to
  // the hub; deliveries start with Start().
  static absl::StatusOr<std::unique_ptr<WebhookNotifier>> Create(WebhookOptions options, JobManager* manager,
                                                                 const SpecValidator* validator);
  ~WebhookNotifier();  // Stop()s

  void Start();
  // Ends the delivery thread (pending deliveries are dropped).
  void Stop();

  // OK when `tenant` has a signing secret; FAILED_PRECONDITION saying so otherwise.
  absl::Status CheckTenant(const std::string& tenant) const;

  // Deliveries queued or waiting for a retry, for tests.
  int Pending() const;

 private:
  struct Delivery {
    std::string job_id;
    std::string event;        // job.succeeded ...
    std::string delivery_id;  // the same for every attempt
    int attempt = 0;          // attempts made
    absl::Time due;
    std::string body;         // the job's JSON, fixed at the first attempt
    std::string url, tenant;
  };
  struct Later {
    bool operator()(const Delivery& a, const Delivery& b) const { return a.due > b.due; }
  };

  WebhookNotifier(WebhookOptions options, JobManager* manager, const SpecValidator* validator)
      : options_(std::move(options)), manager_(manager), validator_(validator) {}

  void OnEvent(const ftd::v1::JobEvent& event);
  void Loop();
  // One attempt; requeues the delivery when it is to be retried.
  void Attempt(Delivery d);
  void Note(const std::string& job_id, const std::string& message);

  const WebhookOptions options_;
  JobManager* const manager_;
  const SpecValidator* const validator_;
  absl::flat_hash_map<std::string, std::string> secrets_;  // tenant -> secret (read-only after Create)
  std::unique_ptr<EventHub::Subscription> subscription_;

  mutable absl::Mutex mu_;
  std::priority_queue<Delivery, std::vector<Delivery>, Later> queue_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace ftd::server
