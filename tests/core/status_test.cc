#include "core/base/status.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <memory>
#include <string>

namespace mirrorcast {
namespace {

TEST(StatusTest, DefaultIsOk) {
  Status st;
  EXPECT_TRUE(st.ok());
  EXPECT_EQ(st.code(), Status::Code::kOk);
  EXPECT_EQ(st.ToString(), "ok");
  EXPECT_TRUE(Status::Ok().ok());
}

TEST(StatusTest, FactoriesCarryCodeAndMessage) {
  struct Case {
    Status status;
    Status::Code code;
    const char* name;
  };
  const Case cases[] = {
      {Status::InvalidArgument("m"), Status::Code::kInvalidArgument, "invalid argument"},
      {Status::NotFound("m"), Status::Code::kNotFound, "not found"},
      {Status::AlreadyExists("m"), Status::Code::kAlreadyExists, "already exists"},
      {Status::IoError("m"), Status::Code::kIoError, "I/O error"},
      {Status::Corruption("m"), Status::Code::kCorruption, "corruption"},
      {Status::Rejected("m"), Status::Code::kRejected, "rejected"},
      {Status::Unavailable("m"), Status::Code::kUnavailable, "unavailable"},
      {Status::Timeout("m"), Status::Code::kTimeout, "timeout"},
      {Status::ResourceExhausted("m"), Status::Code::kResourceExhausted, "resource exhausted"},
      {Status::FailedPrecondition("m"), Status::Code::kFailedPrecondition, "failed precondition"},
      {Status::Internal("m"), Status::Code::kInternal, "internal error"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.status.ok()) << c.name;
    EXPECT_EQ(c.status.code(), c.code) << c.name;
    EXPECT_EQ(c.status.message(), "m");
    EXPECT_EQ(c.status.ToString(), std::string(c.name) + ": m");
    EXPECT_STREQ(CodeName(c.code), c.name);
  }
}

TEST(StatusTest, FromErrnoMapsCodes) {
  Status enoent = Status::FromErrno("open /x", ENOENT);
  EXPECT_EQ(enoent.code(), Status::Code::kNotFound);
  EXPECT_EQ(enoent.message(), "open /x: No such file or directory");

  EXPECT_EQ(Status::FromErrno("write", ENOSPC).code(), Status::Code::kResourceExhausted);
  EXPECT_EQ(Status::FromErrno("write", EDQUOT).code(), Status::Code::kResourceExhausted);
  Status eacces = Status::FromErrno("open /y", EACCES);
  EXPECT_EQ(eacces.code(), Status::Code::kIoError);
  EXPECT_EQ(eacces.message(), "open /y: Permission denied");
}

TEST(StatusTest, WithContextPrefixesMessageAndKeepsCode) {
  Status st = Status::Corruption("hash mismatch").WithContext("file a/b");
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_EQ(st.message(), "file a/b: hash mismatch");
  EXPECT_EQ(st.WithContext("apply").message(), "apply: file a/b: hash mismatch");
  // Context never turns success into failure.
  EXPECT_TRUE(Status::Ok().WithContext("anything").ok());
  EXPECT_EQ(Status::Ok().WithContext("anything").message(), "");
}

TEST(ResultTest, HoldsValue) {
  Result<std::string> r(std::string("hello"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(*r, "hello");
  EXPECT_EQ(r->size(), 5u);
  r.value() += "!";
  EXPECT_EQ(r.value(), "hello!");
  std::string moved = std::move(r).value();
  EXPECT_EQ(moved, "hello!");
}

TEST(ResultTest, HoldsError) {
  Result<int> r(Status::NotFound("no such thing"));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kNotFound);
  EXPECT_EQ(r.status().message(), "no such thing");
}

TEST(ResultTest, HoldsMoveOnlyValue) {
  Result<std::unique_ptr<int>> r(std::make_unique<int>(7));
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 7);
}

Status FailIf(bool fail, int* reached) {
  MC_RETURN_IF_ERROR(fail ? Status::Timeout("slow peer") : Status::Ok());
  ++*reached;
  return Status::Ok();
}

TEST(MacrosTest, ReturnIfErrorReturnsEarlyOnlyOnError) {
  int reached = 0;
  EXPECT_TRUE(FailIf(false, &reached).ok());
  EXPECT_EQ(reached, 1);
  Status st = FailIf(true, &reached);
  EXPECT_EQ(st.code(), Status::Code::kTimeout);
  EXPECT_EQ(st.message(), "slow peer");
  EXPECT_EQ(reached, 1);
}

Result<int> Parse(std::string_view s) {
  if (s.empty()) return Status::InvalidArgument("empty");
  return static_cast<int>(s.size());
}

Result<int> DoubleOf(std::string_view s, int* reached) {
  MC_ASSIGN_OR_RETURN(int n, Parse(s));
  ++*reached;
  return 2 * n;
}

Result<std::string> TwoAssignsInOneFunction(std::string_view a, std::string_view b) {
  MC_ASSIGN_OR_RETURN(int x, Parse(a));
  MC_ASSIGN_OR_RETURN(int y, Parse(b));
  return std::to_string(x) + "," + std::to_string(y);
}

TEST(MacrosTest, AssignOrReturn) {
  int reached = 0;
  Result<int> ok = DoubleOf("abc", &reached);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 6);
  EXPECT_EQ(reached, 1);

  Result<int> bad = DoubleOf("", &reached);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(reached, 1);

  Result<std::string> two = TwoAssignsInOneFunction("ab", "abcd");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, "2,4");
  EXPECT_FALSE(TwoAssignsInOneFunction("ab", "").ok());
}

}  // namespace
}  // namespace mirrorcast
