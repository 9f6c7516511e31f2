#include "server/grpc_job_service.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace ftd::server {
namespace {

absl::StatusOr<Principal> AuthenticateCall(const JobApi& api, grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return api.Authenticate("");
  return api.Authenticate(absl::string_view(it->second.data(), it->second.size()));
}

template <typename Message>
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, Message* message) {
  grpc::ByteBuffer copy(buffer);  // the reader needs a mutable buffer; copies share slices
  grpc::ProtoBufferReader reader(&copy);
  if (!message->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: not a valid ", Message::descriptor()->full_name(), " message"));
  }
  return absl::OkStatus();
}

void SerializeResponse(const google::protobuf::Message& message, grpc::ByteBuffer* buffer) {
  std::string bytes = message.SerializeAsString();
  grpc::Slice slice(std::move(bytes));
  *buffer = grpc::ByteBuffer(&slice, 1);
}

// One unary call: authenticate, parse, run the JobApi handler, serialize, finish.
template <typename Request, typename Handler>
grpc::ServerUnaryReactor* RunUnary(JobApi* api, grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request_bytes,
                                   grpc::ByteBuffer* response_bytes, Handler handler) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::Status status = [&]() -> absl::Status {
    FTD_ASSIGN_OR_RETURN(Principal who, AuthenticateCall(*api, ctx));
    Request request;
    FTD_RETURN_IF_ERROR(ParseRequest(*request_bytes, &request));
    FTD_ASSIGN_OR_RETURN(auto response, handler(who, request));
    SerializeResponse(response, response_bytes);
    return absl::OkStatus();
  }();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Streams a JobWatch: one write in flight at a time; new events wake it through the watch's
// wakeup callback; the stream finishes OK after the terminal status event.
class WatchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  WatchReactor(JobApi* api, grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request_bytes) {
    absl::Status status = [&]() -> absl::Status {
      FTD_ASSIGN_OR_RETURN(Principal who, AuthenticateCall(*api, ctx));
      ftd::v1::WatchJobRequest request;
      FTD_RETURN_IF_ERROR(ParseRequest(*request_bytes, &request));
      FTD_ASSIGN_OR_RETURN(std::unique_ptr<JobWatch> watch,
                           api->WatchJob(who, request, [this] { Pump(); }));
      absl::MutexLock lock(&mu_);
      watch_ = std::move(watch);
      return absl::OkStatus();
    }();
    if (!status.ok()) {
      FinishOnce(status);
      return;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
    }
    if (!ok) {
      FinishOnce(absl::CancelledError("the client went away"));
      return;
    }
    Pump();
  }

  void OnCancel() override { FinishOnce(absl::CancelledError("cancelled")); }

  void OnDone() override {
    // Unsubscribes; no wakeup (and so no Pump) runs after this returns.
    std::unique_ptr<JobWatch> watch;
    {
      absl::MutexLock lock(&mu_);
      watch = std::move(watch_);
    }
    watch.reset();
    delete this;
  }

 private:
  // Decides under the lock, acts (StartWrite/Finish) outside it: gRPC may run a reaction on
  // the calling thread, and absl::Mutex is not reentrant.
  void Pump() {
    enum class Action { kNone, kWrite, kFinish } action = Action::kNone;
    absl::Status finish_status;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_ || watch_ == nullptr) return;
      absl::StatusOr<std::optional<ftd::v1::JobEvent>> next = watch_->Next();
      if (!next.ok()) {
        finished_ = true;
        finish_status = next.status();
        action = Action::kFinish;
      } else if (!next->has_value()) {
        if (!watch_->finished()) return;
        finished_ = true;
        action = Action::kFinish;
      } else {
        SerializeResponse(**next, &buffer_);
        writing_ = true;
        action = Action::kWrite;
      }
    }
    if (action == Action::kWrite) StartWrite(&buffer_);
    if (action == Action::kFinish) Finish(ToGrpcStatus(finish_status));
  }

  // Returns whether this call must Finish (the first to get here).
  bool MarkFinished() {
    absl::MutexLock lock(&mu_);
    return !std::exchange(finished_, true);
  }
  void FinishOnce(const absl::Status& status) {
    if (MarkFinished()) Finish(ToGrpcStatus(status));
  }

  absl::Mutex mu_;
  std::unique_ptr<JobWatch> watch_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer buffer_;  // owned by the write in flight while writing_
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::ServerUnaryReactor* GrpcJobService::CreateJob(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::CreateJobRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->CreateJob(who, r); });
}

grpc::ServerUnaryReactor* GrpcJobService::GetJob(grpc::CallbackServerContext* ctx,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::GetJobRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->GetJob(who, r); });
}

grpc::ServerUnaryReactor* GrpcJobService::ListJobs(grpc::CallbackServerContext* ctx,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::ListJobsRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->ListJobs(who, r); });
}

grpc::ServerUnaryReactor* GrpcJobService::CancelJob(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::CancelJobRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->CancelJob(who, r); });
}

grpc::ServerUnaryReactor* GrpcJobService::ListJobEvents(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* request,
                                                        grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::ListJobEventsRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->ListJobEvents(who, r); });
}

grpc::ServerUnaryReactor* GrpcJobService::ListCheckpoints(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return RunUnary<ftd::v1::ListCheckpointsRequest>(
      api_, ctx, request, response,
      [this](const Principal& who, const auto& r) { return api_->ListCheckpoints(who, r); });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GrpcJobService::WatchJob(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request) {
  return new WatchReactor(api_, ctx, request);  // deletes itself in OnDone
}

}  // namespace ftd::server
