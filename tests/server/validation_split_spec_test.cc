// spec.datasets.validation_fraction through the coordinator's SpecValidator: a held-out split of
// the training file instead of a validation file, for eval_every; bad values name the field.
#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/spec_validator.h"
#include "tests/server/server_test_util.h"

namespace ftd::server {
namespace {

using ::testing::HasSubstr;

class ValidationSplitSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ValidatorConfig config;
    config.shared_model_roots = {env_.model_root()};
    config.data_roots = {env_.data_root()};
    config.output_roots = {env_.output_root()};
    auto v = SpecValidator::Create(config);
    ASSERT_TRUE(v.ok()) << v.status();
    validator_ = std::make_unique<SpecValidator>(*std::move(v));
  }
  std::string Check(double fraction, const std::string& validation, int eval_every) {
    ftd::v1::JobSpec spec = ftd::testing::ValidSpec(env_);
    spec.mutable_datasets()->set_validation_fraction(fraction);
    if (!validation.empty()) spec.mutable_datasets()->set_validation(validation);
    spec.mutable_hyperparameters()->set_eval_every(eval_every);
    std::vector<std::string> notes;
    absl::Status st = validator_->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes);
    return st.ok() ? "OK" : std::string(st.message());
  }
  ftd::testing::TestEnv env_;
  std::unique_ptr<SpecValidator> validator_;
};

TEST_F(ValidationSplitSpecTest, AFractionServesEvalEveryLikeAFile) {
  EXPECT_EQ(Check(0.05, "", 10), "OK");
  EXPECT_EQ(Check(0, env_.train_file(), 10), "OK");
  EXPECT_EQ(Check(0, "", 0), "OK");
  EXPECT_THAT(Check(0, "", 10), HasSubstr("spec.hyperparameters.eval_every: needs spec.datasets.validation or "
                                          "spec.datasets.validation_fraction"));
}

TEST_F(ValidationSplitSpecTest, BadFractionsNameTheField) {
  EXPECT_THAT(Check(1.0, "", 0), HasSubstr("spec.datasets.validation_fraction: must be a finite number in [0, 1)"));
  EXPECT_THAT(Check(-0.1, "", 0), HasSubstr("spec.datasets.validation_fraction"));
  EXPECT_THAT(Check(std::nan(""), "", 0), HasSubstr("spec.datasets.validation_fraction"));
  EXPECT_THAT(Check(0.1, env_.train_file(), 5),
              HasSubstr("spec.datasets.validation_fraction: excludes spec.datasets.validation"));
}

}  // namespace
}  // namespace ftd::server
