// CheckHeartbeat: a heartbeat passes the same time checks as an event.
#include <gtest/gtest.h>

#include "core/wire/envelope.h"

namespace mirrorcast {
namespace {

constexpr int64_t kNow = 1800000000;

v1::Heartbeat HeartbeatAt(int64_t issued, int64_t expires) {
  v1::Heartbeat hb;
  hb.set_origin("origin");
  hb.set_issued_unix(issued);
  hb.set_expires_unix(expires);
  auto* r = hb.add_repos();
  r->set_repo("demo");
  r->set_serial(3);
  return hb;
}

TEST(CheckHeartbeatTest, AcceptsAValidHeartbeat) {
  EXPECT_TRUE(CheckHeartbeat(HeartbeatAt(kNow - 5, kNow + 30), kNow).ok());
  // A little clock skew is fine.
  EXPECT_TRUE(CheckHeartbeat(HeartbeatAt(kNow + 60, kNow + 90), kNow).ok());
}

TEST(CheckHeartbeatTest, RefusesNoExpiry) {
  Status s = CheckHeartbeat(HeartbeatAt(kNow, 0), kNow);
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_NE(s.message().find("no expiry"), std::string::npos) << s.ToString();
}

TEST(CheckHeartbeatTest, RefusesExpired) {
  Status s = CheckHeartbeat(HeartbeatAt(kNow - 100, kNow - 1), kNow);
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_NE(s.message().find("expired"), std::string::npos) << s.ToString();
}

TEST(CheckHeartbeatTest, RefusesIssuedTooFarAhead) {
  Status s = CheckHeartbeat(
      HeartbeatAt(kNow + kMaxClockSkewSeconds + 1, kNow + kMaxClockSkewSeconds + 30), kNow);
  EXPECT_EQ(s.code(), Status::Code::kRejected);
  EXPECT_NE(s.message().find("future"), std::string::npos) << s.ToString();
}

TEST(CheckHeartbeatTest, RefusesExpiryBeforeIssue) {
  Status s = CheckHeartbeat(HeartbeatAt(kNow, kNow - 1), kNow - 10);
  EXPECT_EQ(s.code(), Status::Code::kRejected) << s.ToString();
}

}  // namespace
}  // namespace mirrorcast
