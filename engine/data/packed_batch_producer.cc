#include "engine/data/packed_batch_producer.h"

#include <chrono>
#include <vector>

namespace ftd::data {

absl::StatusOr<std::unique_ptr<PackedBatchProducer>> PackedBatchProducer::Start(const DocumentSource* source,
                                                                                PackingOptions packing,
                                                                                DataPosition start,
                                                                                ProducerOptions options) {
  auto packer = SequencePacker::Create(source, packing, start);
  if (!packer.ok()) return packer.status();
  return Start(std::move(*packer), options);
}

absl::StatusOr<std::unique_ptr<PackedBatchProducer>> PackedBatchProducer::Start(std::unique_ptr<SampleStream> stream,
                                                                                ProducerOptions options) {
  if (options.num_shards < 1 || options.shard_index < 0 || options.shard_index >= options.num_shards) {
    return absl::InvalidArgumentError("producer: shard_index must be in [0, num_shards)");
  }
  if (options.queue_depth == 0) return absl::InvalidArgumentError("producer: queue_depth must be positive");
  std::unique_ptr<PackedBatchProducer> producer(new PackedBatchProducer(std::move(stream), options));
  producer->thread_ = std::thread([p = producer.get()] { p->Run(); });
  return producer;
}

PackedBatchProducer::~PackedBatchProducer() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void PackedBatchProducer::Run() {
  std::vector<PackedSample> group;
  while (true) {
    group.clear();
    absl::Status error;
    for (int32_t i = 0; i < options_.num_shards; ++i) {
      auto sample = stream_->Next();
      if (!sample.ok()) {
        error = sample.status();
        break;
      }
      if (!*sample) break;
      group.push_back(std::move(**sample));
    }
    std::optional<PackedSample> mine;
    if (error.ok() && !group.empty()) {
      if (options_.shard_index < static_cast<int32_t>(group.size())) {
        mine = std::move(group[options_.shard_index]);
      } else {
        mine = stream_->PaddingSample();
      }
      mine->next_position = group.back().next_position;  // the same on every rank
    }
    absl::MutexLock lock(&mutex_);
    if (!error.ok() || !mine) {
      error_ = error;
      done_ = true;
      return;
    }
    const auto has_room = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
      return stopping_ || queue_.size() < options_.queue_depth;
    };
    if (!has_room()) {
      const auto wait_start = std::chrono::steady_clock::now();
      mutex_.Await(absl::Condition(&has_room));
      stats_.producer_wait_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
    }
    if (stopping_) return;
    queue_.push_back(std::move(*mine));
    if (static_cast<int32_t>(group.size()) < options_.num_shards) {
      done_ = true;  // the data ended inside this group
      return;
    }
  }
}

absl::StatusOr<std::optional<PackedSample>> PackedBatchProducer::Next() {
  absl::MutexLock lock(&mutex_);
  const auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return !queue_.empty() || done_; };
  if (!ready()) {
    const auto wait_start = std::chrono::steady_clock::now();
    mutex_.Await(absl::Condition(&ready));
    stats_.consumer_wait_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
  }
  if (queue_.empty()) {
    if (!error_.ok()) return error_;
    return std::optional<PackedSample>();
  }
  PackedSample sample = std::move(queue_.front());
  queue_.pop_front();
  ++stats_.samples_delivered;
  return std::optional<PackedSample>(std::move(sample));
}

ProducerStats PackedBatchProducer::stats() const {
  absl::MutexLock lock(&mutex_);
  return stats_;
}

}  // namespace ftd::data
