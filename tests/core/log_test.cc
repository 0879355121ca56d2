// The log sink: UTC timestamps with Z, journald priorities, one line per
// message whatever it holds.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <regex>

#include <cstdlib>
#include <ctime>
#include <sstream>

#include "core/base/log.h"

namespace mirrorcast {
namespace {

using boost::log::trivial::severity_level;

TEST(SanitizeLogLineTest, KeepsUtf8AndEscapesControlAndInvalidBytes) {
  EXPECT_EQ(SanitizeLogLine("plain text"), "plain text");
  EXPECT_EQ(SanitizeLogLine("pool/caf\xc3\xa9-\xe2\x82\xac.rpm"),
            "pool/caf\xc3\xa9-\xe2\x82\xac.rpm");
  EXPECT_EQ(SanitizeLogLine("\xf0\x9f\x93\xa6"), "\xf0\x9f\x93\xa6");  // 4-byte sequence
  EXPECT_EQ(SanitizeLogLine("a\nb\rc\td"), "a\\x0ab\\x0dc\\x09d");
  EXPECT_EQ(SanitizeLogLine("x\x7fy"), "x\\x7fy");
  EXPECT_EQ(SanitizeLogLine("bad \xff byte"), "bad \\xff byte");
  EXPECT_EQ(SanitizeLogLine("cut \xc3"), "cut \\xc3");                    // truncated sequence
  EXPECT_EQ(SanitizeLogLine("over \xc0\xaf"), "over \\xc0\\xaf");         // overlong '/'
  EXPECT_EQ(SanitizeLogLine("sur \xed\xa0\x80"), "sur \\xed\\xa0\\x80");  // UTF-16 surrogate
  EXPECT_EQ(SanitizeLogLine("big \xf4\x90\x80\x80"), "big \\xf4\\x90\\x80\\x80");  // > U+10FFFF
  EXPECT_EQ(SanitizeLogLine(std::string("nul\0x", 5)), "nul\\x00x");
}

TEST(LogSinkTest, LinesAreUtcWithZAndCannotBeSplit) {
  std::ostringstream out;
  InitLoggingTo(out, "test", severity_level::info, /*journal_priority=*/false);
  MC_LOG(info) << "first\npublished repo=demo serial=77";
  MC_LOG(debug) << "filtered out";
  MC_LOG(warning) << "second \xff";
  const std::string text = out.str();
  const std::regex line(
      R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z info test: first\\x0apublished repo=demo serial=77
\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z warning test: second \\xff
)");
  EXPECT_TRUE(std::regex_match(text, line)) << text;
  InitLoggingTo(std::clog, "test", severity_level::info, false);
}

std::string UtcHour() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H", &tm);
  return buf;
}

TEST(LogSinkTest, TimestampsAreUtcWhateverTheLocalZone) {
  setenv("TZ", "JST-9", 1);  // nine hours east of UTC, no tzdata needed
  tzset();
  std::ostringstream out;
  InitLoggingTo(out, "test", severity_level::info, false);
  const std::string before = UtcHour();
  MC_LOG(info) << "now";
  const std::string after = UtcHour();
  const std::string text = out.str();
  const std::string hour = text.substr(0, before.size());
  EXPECT_TRUE(hour == before || hour == after) << text << " vs UTC " << before;
  unsetenv("TZ");
  tzset();
  InitLoggingTo(std::clog, "test", severity_level::info, false);
}

TEST(LogSinkTest, JournalLinesCarryTheirSyslogPriority) {
  std::ostringstream out;
  InitLoggingTo(out, "test", severity_level::debug, /*journal_priority=*/true);
  MC_LOG(debug) << "d";
  MC_LOG(info) << "i";
  MC_LOG(warning) << "w";
  MC_LOG(error) << "e";
  const std::string text = out.str();
  const std::regex line(
      R"(<7>\S+Z debug test: d
<6>\S+Z info test: i
<4>\S+Z warning test: w
<3>\S+Z error test: e
)");
  EXPECT_TRUE(std::regex_match(text, line)) << text;
  InitLoggingTo(std::clog, "test", severity_level::info, false);
}

TEST(LogSinkTest, JournalIsDetectedOnlyForTheStreamSystemdNamed) {
  unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(StderrIsJournal());
  setenv("JOURNAL_STREAM", "1:2", 1);  // some other stream
  EXPECT_FALSE(StderrIsJournal());
  struct stat st {};
  ASSERT_EQ(fstat(2, &st), 0);
  setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)).c_str(),
         1);
  EXPECT_TRUE(StderrIsJournal());
  unsetenv("JOURNAL_STREAM");
}

}  // namespace
}  // namespace mirrorcast
