// The JobService over gRPC (callback API). Methods take raw ByteBuffers and parse them here,
// so a request that is not a valid message gets INVALID_ARGUMENT (gRPC's own parser would
// answer INTERNAL), and every handler is the shared JobApi's.
#pragma once

#include "ftd/v1/jobs.grpc.pb.h"
#include "server/job_api.h"

namespace ftd::server {

using GrpcJobServiceBase = ftd::v1::JobService::WithRawCallbackMethod_CreateJob<
    ftd::v1::JobService::WithRawCallbackMethod_GetJob<
        ftd::v1::JobService::WithRawCallbackMethod_ListJobs<
            ftd::v1::JobService::WithRawCallbackMethod_CancelJob<
                ftd::v1::JobService::WithRawCallbackMethod_WatchJob<
                    ftd::v1::JobService::WithRawCallbackMethod_ListJobEvents<
                        ftd::v1::JobService::WithRawCallbackMethod_ListCheckpoints<
                            ftd::v1::JobService::Service>>>>>>>;

class GrpcJobService final : public GrpcJobServiceBase {
 public:
  explicit GrpcJobService(JobApi* api) : api_(api) {}

  grpc::ServerUnaryReactor* CreateJob(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchJob(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ListJobEvents(grpc::CallbackServerContext* ctx,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* ctx,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;

 private:
  JobApi* const api_;
};

// absl -> grpc status (the code numbering is the same).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace ftd::server
