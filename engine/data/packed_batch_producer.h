// Packs samples ahead of training on a background thread, into a bounded queue, so the training
// loop never waits for tokenization while the producer keeps up. Also shards samples across
// data-parallel ranks.
//
// Sharding: the sample stream is cut into groups of `num_shards`; rank r takes the
// r-th sample of each group, and every rank reports the position after the whole group, so all
// ranks save the same DataPosition and resume in step. When the data ends inside a group, the
// ranks left without a sample get a padding-only sample (no loss) so all ranks take the same
// number of steps.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/data/sample_stream.h"
#include "engine/data/sequence_packer.h"

namespace ftd::data {

struct ProducerOptions {
  size_t queue_depth = 8;
  int32_t shard_index = 0;  // this rank's data-parallel index
  int32_t num_shards = 1;   // data-parallel world size
};

struct ProducerStats {
  int64_t samples_delivered = 0;
  // Seconds Next() spent blocked on an empty queue (0 when the producer keeps up).
  double consumer_wait_seconds = 0;
  // Seconds the producer thread spent blocked on a full queue (ahead of the consumer).
  double producer_wait_seconds = 0;
};

class PackedBatchProducer {
 public:
  // `source` must outlive the producer. Resumes from `start` (a sample's next_position).
  static absl::StatusOr<std::unique_ptr<PackedBatchProducer>> Start(const DocumentSource* source,
                                                                    PackingOptions packing, DataPosition start = {},
                                                                    ProducerOptions options = {});
  // Runs any sample stream ahead (only the producer thread calls it once started).
  static absl::StatusOr<std::unique_ptr<PackedBatchProducer>> Start(std::unique_ptr<SampleStream> stream,
                                                                    ProducerOptions options = {});
  // Stops the thread and waits for it.
  ~PackedBatchProducer();
  PackedBatchProducer(const PackedBatchProducer&) = delete;
  PackedBatchProducer& operator=(const PackedBatchProducer&) = delete;

  // The next sample for this rank (blocks while the queue is empty); nullopt at the end of the
  // data; the producer's error if packing failed (e.g. a bad line, named with file and line).
  absl::StatusOr<std::optional<PackedSample>> Next();

  ProducerStats stats() const;

 private:
  PackedBatchProducer(std::unique_ptr<SampleStream> stream, ProducerOptions options)
      : stream_(std::move(stream)), options_(options) {}
  void Run();

  std::unique_ptr<SampleStream> stream_;  // used by the producer thread only
  const ProducerOptions options_;
  mutable absl::Mutex mutex_;
  std::deque<PackedSample> queue_ ABSL_GUARDED_BY(mutex_);
  bool done_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mutex_);
  ProducerStats stats_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace ftd::data
