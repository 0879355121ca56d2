// `mirrorcast status` output: the JSON object scripts parse and the table
// operators read, including peer-supplied strings that are not well-behaved.
#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/crypto/sha256.h"
#include "tools/commands.h"

namespace mirrorcast::testing {
namespace {

constexpr int64_t kNow = 1700000000;  // 2023-11-14T22:13:20Z

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

v1::MirrorStatus Mirror(const std::string& id, const std::string& repo, uint64_t serial,
                        v1::AckState state) {
  v1::MirrorStatus m;
  m.set_mirror_id(id);
  m.set_repo(repo);
  m.set_serial(serial);
  m.set_target_serial(serial);
  m.set_state(state);
  return m;
}

// Two repos and two mirrors, listed out of order on purpose.
v1::StatusReply SampleStatus() {
  v1::StatusReply status;
  status.set_broker_id("origin-1");
  status.set_now_unix(kNow);
  auto* main = status.add_repos();
  main->set_repo("main");
  main->set_serial(3);
  main->set_manifest_sha256(Sha256Of("manifest main 3"));
  auto* alpha = status.add_repos();
  alpha->set_repo("alpha");
  alpha->set_serial(1);
  alpha->set_manifest_sha256(Sha256Of("manifest alpha 1"));

  v1::MirrorStatus b = Mirror("mirror-b", "main", 3, v1::ACK_APPLIED);
  b.set_last_ack_unix(kNow - 30);
  b.set_bytes_fetched(2048);
  b.set_bytes_signature(512);
  b.set_bytes_reused(1048576);
  b.set_seconds(1.25);
  *status.add_mirrors() = b;

  v1::MirrorStatus a = Mirror("mirror-a", "main", 2, v1::ACK_IN_PROGRESS);
  a.set_target_serial(3);  // still on its way; never ACKed anything
  *status.add_mirrors() = a;
  return status;
}

TEST(StatusJson, HasTheDocumentedKeysAndValues) {
  const std::string text = FormatStatusJson(SampleStatus());
  EXPECT_EQ(text.find('\n'), std::string::npos) << "one line";
  const nlohmann::json doc = nlohmann::json::parse(text);
  EXPECT_EQ(doc.at("broker_id"), "origin-1");
  EXPECT_EQ(doc.at("now_unix"), kNow);

  const auto& repos = doc.at("repos");
  ASSERT_EQ(repos.size(), 2u);
  EXPECT_EQ(repos[0].at("repo"), "alpha");  // sorted by name
  EXPECT_EQ(repos[1].at("repo"), "main");
  EXPECT_EQ(repos[1].at("serial"), 3);
  EXPECT_EQ(repos[1].at("manifest_sha256"), ToHex(Sha256Of("manifest main 3")));
  const std::string hex = repos[1].at("manifest_sha256");
  EXPECT_EQ(hex.size(), 64u);
  EXPECT_EQ(hex.find_first_not_of("0123456789abcdef"), std::string::npos) << hex;

  const auto& mirrors = doc.at("mirrors");
  ASSERT_EQ(mirrors.size(), 2u);
  const auto& a = mirrors[0];  // sorted by mirror id
  EXPECT_EQ(a.at("mirror_id"), "mirror-a");
  EXPECT_EQ(a.at("repo"), "main");
  EXPECT_EQ(a.at("serial"), 2);
  EXPECT_EQ(a.at("target_serial"), 3);
  EXPECT_EQ(a.at("state"), "in_progress");
  EXPECT_EQ(a.at("last_ack_unix"), 0);
  EXPECT_EQ(a.at("error"), "");
  const auto& b = mirrors[1];
  EXPECT_EQ(b.at("mirror_id"), "mirror-b");
  EXPECT_EQ(b.at("state"), "applied");
  EXPECT_EQ(b.at("last_ack_unix"), kNow - 30);
  EXPECT_EQ(b.at("bytes_fetched"), 2048);
  EXPECT_EQ(b.at("bytes_signature"), 512);
  EXPECT_EQ(b.at("bytes_reused"), 1048576);
  EXPECT_DOUBLE_EQ(b.at("seconds").get<double>(), 1.25);
  for (const char* key : {"mirror_id", "repo", "serial", "target_serial", "state", "last_ack_unix",
                          "bytes_fetched", "bytes_signature", "bytes_reused", "seconds", "error"}) {
    EXPECT_TRUE(b.contains(key)) << key;
  }
}

TEST(StatusJson, EveryStateHasItsLowercaseName) {
  const std::vector<std::pair<v1::AckState, std::string>> states = {
      {v1::ACK_APPLIED, "applied"},         {v1::ACK_FAILED, "failed"},
      {v1::ACK_REJECTED, "rejected"},       {v1::ACK_STALE, "stale"},
      {v1::ACK_IN_PROGRESS, "in_progress"}, {v1::ACK_STATE_UNSPECIFIED, "unknown"}};
  v1::StatusReply status;
  for (size_t i = 0; i < states.size(); ++i) {
    *status.add_mirrors() = Mirror("m" + std::to_string(i), "main", 1, states[i].first);
  }
  const nlohmann::json doc = nlohmann::json::parse(FormatStatusJson(status));
  ASSERT_EQ(doc.at("mirrors").size(), states.size());
  for (size_t i = 0; i < states.size(); ++i) {
    EXPECT_EQ(doc.at("mirrors")[i].at("state"), states[i].second);
  }
}

TEST(StatusJson, OddStringsStayParsable) {
  v1::StatusReply status = SampleStatus();
  status.set_broker_id("broker\n\"quoted\"");
  v1::MirrorStatus odd = Mirror("evil\nmirror", "bad\xff\xfe", 1, v1::ACK_FAILED);
  odd.set_error("line1\nline2\x1b[31m\t\"end\\");
  odd.set_seconds(std::numeric_limits<double>::quiet_NaN());
  *status.add_mirrors() = odd;

  const std::string text = FormatStatusJson(status);
  EXPECT_EQ(text.find('\n'), std::string::npos) << "one line";
  const nlohmann::json doc = nlohmann::json::parse(text);
  EXPECT_EQ(doc.at("broker_id"), "broker\n\"quoted\"");
  ASSERT_EQ(doc.at("mirrors").size(), 3u);
  const auto& m = doc.at("mirrors")[0];  // "evil\n..." sorts first
  EXPECT_EQ(m.at("mirror_id"), "evil\nmirror");
  EXPECT_EQ(m.at("repo"), "bad\xEF\xBF\xBD\xEF\xBF\xBD");  // invalid bytes replaced
  EXPECT_EQ(m.at("error"), "line1\nline2\x1b[31m\t\"end\\");
  EXPECT_EQ(m.at("seconds"), 0.0);  // NaN is not JSON
}

// The mirror table of a FormatStatusTable output: header and rows.
std::vector<std::string> MirrorTable(const std::string& text) {
  std::vector<std::string> lines = Lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].starts_with("MIRROR ")) return {lines.begin() + i, lines.end()};
  }
  ADD_FAILURE() << "no mirror table in:\n" << text;
  return {};
}

// The text of `row` in the column headed `column` (up to the next column).
std::string Cell(const std::string& header, const std::string& row, const std::string& column,
                 const std::string& next_column) {
  const size_t start = header.find(column);
  const size_t end = next_column.empty() ? std::string::npos : header.find(next_column);
  EXPECT_NE(start, std::string::npos) << column;
  if (start == std::string::npos || start >= row.size()) return "";
  std::string cell = row.substr(start, end == std::string::npos ? end : end - start);
  while (!cell.empty() && cell.back() == ' ') cell.pop_back();
  return cell;
}

TEST(StatusTable, OneAlignedRowPerMirror) {
  const std::string text = FormatStatusTable(SampleStatus(), kNow);
  const std::vector<std::string> lines = Lines(text);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0], "broker origin-1 at 2023-11-14T22:13:20Z");
  EXPECT_NE(text.find("alpha  1"), std::string::npos) << text;
  EXPECT_NE(text.find(ToHex(Sha256Of("manifest main 3"))), std::string::npos) << text;

  const std::vector<std::string> table = MirrorTable(text);
  ASSERT_EQ(table.size(), 3u) << text;  // header + one row per mirror
  const std::string& h = table[0];
  const std::vector<std::string> columns = {
      "MIRROR",   "VIA",     "REPO",     "SERIAL", "STATE",   "HEALTH", "LAST SEEN",
      "LAST ACK", "FETCHED", "SIG SENT", "REUSED", "SECONDS", "ERROR"};
  size_t previous = 0;
  for (const std::string& c : columns) {
    const size_t at = h.find(c, previous);
    ASSERT_NE(at, std::string::npos) << c << " in " << h;
    previous = at + c.size();
  }
  auto cell = [&](const std::string& row, size_t column) {
    return Cell(h, row, columns[column], column + 1 < columns.size() ? columns[column + 1] : "");
  };

  const std::string& a = table[1];  // sorted by mirror id
  EXPECT_EQ(cell(a, 0), "mirror-a");
  EXPECT_EQ(cell(a, 1), "-");  // reports to this broker directly
  EXPECT_EQ(cell(a, 2), "main");
  EXPECT_EQ(cell(a, 3), "2 -> 3");
  EXPECT_EQ(cell(a, 4), "in_progress");
  EXPECT_EQ(cell(a, 5), "-");  // the sample has no broker-computed health
  EXPECT_EQ(cell(a, 6), "never");
  EXPECT_EQ(cell(a, 7), "never");
  EXPECT_EQ(cell(a, 8), "0 B");
  EXPECT_EQ(cell(a, 12), "-");

  const std::string& b = table[2];
  EXPECT_EQ(cell(b, 0), "mirror-b");
  EXPECT_EQ(cell(b, 3), "3");
  EXPECT_EQ(cell(b, 4), "applied");
  EXPECT_EQ(cell(b, 7), "30s ago (2023-11-14T22:12:50Z)");
  EXPECT_EQ(cell(b, 8), "2.0 KiB");
  EXPECT_EQ(cell(b, 9), "512 B");
  EXPECT_EQ(cell(b, 10), "1.0 MiB");
  EXPECT_EQ(cell(b, 11), "1.25");
  EXPECT_EQ(cell(b, 12), "-");
}

TEST(StatusTable, EmptyBrokerSaysSo) {
  v1::StatusReply status;
  status.set_broker_id("fresh");
  const std::string text = FormatStatusTable(status, kNow);
  EXPECT_NE(text.find("no repos published yet"), std::string::npos) << text;
  EXPECT_NE(text.find("no mirrors have reported yet"), std::string::npos) << text;
  EXPECT_EQ(text.find("MIRROR "), std::string::npos) << text;
}

TEST(StatusTable, OddStringsDoNotBreakTheLayout) {
  v1::StatusReply status = SampleStatus();
  status.set_broker_id("broker\nforged line");
  v1::MirrorStatus odd = Mirror("evil\nmirror", "bad\xff\xfe", 1, v1::ACK_FAILED);
  odd.set_error("line1\nline2\r\x1b[31mred");
  odd.set_last_ack_unix(kNow - 7200);
  *status.add_mirrors() = odd;

  const std::string text = FormatStatusTable(status, kNow);
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << "escape sequences reach the terminal";
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(Lines(text)[0], "broker broker forged line at 2023-11-14T22:13:20Z");

  const std::vector<std::string> table = MirrorTable(text);
  ASSERT_EQ(table.size(), 4u) << text;  // header + 3 mirrors, no line split
  const std::string& row = table[1];    // "evil mirror" sorts first
  EXPECT_TRUE(row.starts_with("evil mirror")) << row;
  EXPECT_NE(row.find("failed"), std::string::npos) << row;
  EXPECT_NE(row.find("2h ago"), std::string::npos) << row;
  EXPECT_TRUE(row.ends_with("line1 line2  [31mred")) << row;
  // The other rows keep their columns.
  const size_t state_column = table[0].find("STATE");
  EXPECT_EQ(table[2].substr(state_column, 11), "in_progress") << text;
  EXPECT_EQ(table[3].substr(state_column, 7), "applied") << text;
}

// SampleStatus with serial 3 of main a recall of serial 1 (its reason
// hostile), and main's window 1..2.
v1::StatusReply RecallStatus() {
  v1::StatusReply status = SampleStatus();
  v1::RecallRecord r;
  r.set_repo("main");
  r.set_serial(3);
  r.set_recall_of(1);
  r.set_reason("broken builds\n\x1b[31mforged");
  r.set_published_unix(kNow - 90);
  r.set_key_id("0123456789abcdef0123456789abcdef");
  *status.add_recalls() = r;
  v1::RecallWindow* w = status.add_recall_windows();
  w->set_repo("main");
  w->set_oldest(1);
  w->set_newest(2);
  w->set_keep_versions(4);
  *w->mutable_head_recall() = r;
  return status;
}

TEST(StatusTable, ShowsRecallsTheWindowAndWhichMirrorsHoldARecall) {
  const std::string text = FormatStatusTable(RecallStatus(), kNow);
  EXPECT_EQ(text.find('\x1b'), std::string::npos) << text;
  std::string main_row, recall_row;
  for (const std::string& line : Lines(text)) {
    if (line.starts_with("main ")) main_row = line;
    if (line.starts_with("recall ")) recall_row = line;
  }
  EXPECT_NE(main_row.find("1-2"), std::string::npos) << text;
  EXPECT_TRUE(main_row.ends_with("recall of serial 1: broken builds  [31mforged")) << main_row;
  EXPECT_NE(recall_row.find("serial 1"), std::string::npos) << text;
  EXPECT_NE(recall_row.find("1m ago"), std::string::npos) << recall_row;
  EXPECT_NE(recall_row.find("0123456789abcdef"), std::string::npos) << recall_row;
  const std::vector<std::string> table = MirrorTable(text);
  ASSERT_EQ(table.size(), 3u) << text;
  EXPECT_NE(table[2].find("3 (recall of 1)"), std::string::npos) << table[2];  // mirror-b at 3
  EXPECT_EQ(table[1].find("recall of"), std::string::npos) << table[1];        // mirror-a at 2
}

TEST(StatusJson, CarriesRecallsAndTheWindow) {
  const nlohmann::json doc = nlohmann::json::parse(FormatStatusJson(RecallStatus()));
  const auto& main = doc.at("repos")[1];
  EXPECT_EQ(main.at("recall_window").at("oldest"), 1);
  EXPECT_EQ(main.at("recall_window").at("newest"), 2);
  EXPECT_EQ(main.at("recall_of"), 1);
  EXPECT_EQ(main.at("recall_reason"), "broken builds\n\x1b[31mforged");
  ASSERT_EQ(doc.at("recalls").size(), 1u);
  EXPECT_EQ(doc.at("recalls")[0].at("serial"), 3);
  EXPECT_EQ(doc.at("recalls")[0].at("recall_of"), 1);
  EXPECT_FALSE(doc.at("repos")[0].contains("recall_of"));  // alpha: no window, no recall
}

TEST(StatusCompact, FitsOneHundredColumnsWhateverTheCellsHold) {
  v1::StatusReply status = RecallStatus();
  v1::MirrorStatus long_one =
      Mirror("a-mirror-with-a-very-long-name-that-goes-on.example.org", "main", 1, v1::ACK_FAILED);
  long_one.set_error(std::string(500, 'x') + "\nforged");
  long_one.set_last_ack_unix(kNow - 7200);
  *status.add_mirrors() = long_one;
  const std::string text = FormatStatusCompact(status, kNow);
  for (const std::string& line : Lines(text)) {
    EXPECT_LE(line.size(), 100u) << line;
  }
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  for (const std::string& line : Lines(text)) {
    EXPECT_FALSE(line.starts_with("forged")) << "a cell split a line:\n" << text;
  }
  // The facts that matter are there: serial, how far behind, state.
  bool found = false;
  for (const std::string& line : Lines(text)) {
    if (line.starts_with("a-mirror-with-a-very-...")) {
      found = true;
      EXPECT_NE(line.find(" 1 "), std::string::npos) << line;
      EXPECT_NE(line.find(" 2 "), std::string::npos) << line;  // 2 behind serial 3
      EXPECT_NE(line.find("failed"), std::string::npos) << line;
      EXPECT_NE(line.find("2h"), std::string::npos) << line;
      EXPECT_TRUE(line.ends_with("...")) << line;
    }
  }
  EXPECT_TRUE(found) << text;
  // The wide table keeps every column.
  EXPECT_GT(Lines(FormatStatusTable(status, kNow)).size(), 0u);
}

TEST(StatusCheck, OkWarningAndCriticalFollowTheThresholds) {
  StatusThresholds t;                       // warn 2 / crit 5 behind, silent 1 h / 1 d
  v1::StatusReply status = SampleStatus();  // main at 3: mirror-b at 3, mirror-a at 2 (in progress)
  StatusVerdict v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 0) << v.line;
  EXPECT_TRUE(v.line.starts_with("MIRRORCAST OK - 2 mirror(s) |")) << v.line;
  EXPECT_NE(v.line.find("max_behind=1"), std::string::npos) << v.line;

  status.mutable_repos(0)->set_serial(4);  // mirror-a 2 behind, mirror-b 1
  v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 1) << v.line;
  EXPECT_NE(v.line.find("1 warning (mirror-a/main 2 behind)"), std::string::npos) << v.line;

  status.mutable_repos(0)->set_serial(3);
  status.mutable_mirrors(0)->set_last_ack_unix(kNow - 2 * 86400);  // mirror-b at the head: fine
  status.mutable_mirrors(1)->set_last_ack_unix(kNow - 2 * 3600);   // mirror-a behind, 2 h silent
  v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 1) << v.line;
  EXPECT_NE(v.line.find("mirror-a/main behind and silent for 2h"), std::string::npos) << v.line;

  v1::MirrorStatus failed = Mirror("mirror-c", "main", 3, v1::ACK_FAILED);
  failed.set_error("disk full\nforged");
  *status.add_mirrors() = failed;
  v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 2) << v.line;
  EXPECT_TRUE(
      v.line.starts_with("MIRRORCAST CRITICAL - 3 mirror(s), 1 critical (mirror-c/main "
                         "failed: disk full forged), 1 warning"))
      << v.line;
  EXPECT_NE(v.line.find("| mirrors=3 critical=1 warning=1 max_behind=1"), std::string::npos)
      << v.line;
  EXPECT_EQ(v.line.find('\n'), std::string::npos);

  t.crit_behind = 1;
  status.mutable_mirrors(2)->set_state(v1::ACK_APPLIED);
  v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 2) << v.line;
  EXPECT_NE(v.line.find("mirror-a/main 1 behind"), std::string::npos) << v.line;
}

// With the broker's last-seen time (polls count), a mirror at the head that
// stopped polling is silent too: a dead mirror shows before the next publish.
TEST(StatusCheck, SilenceFollowsLastSeenWhenTheBrokerSendsIt) {
  StatusThresholds t;  // silent 1 h / 1 d
  v1::StatusReply status = SampleStatus();
  status.mutable_mirrors(1)->set_serial(3);  // both at the head
  status.mutable_mirrors(0)->set_last_ack_unix(kNow - 3 * 86400);
  status.mutable_mirrors(0)->set_last_seen_unix(kNow - 20);  // polls: alive
  status.mutable_mirrors(1)->set_last_seen_unix(kNow - 2 * 3600);
  StatusVerdict v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 1) << v.line;
  EXPECT_NE(v.line.find("1 warning (mirror-a/main silent for 2h"), std::string::npos) << v.line;
  status.mutable_mirrors(1)->set_last_seen_unix(kNow - 2 * 86400);
  v = CheckStatus(status, kNow, t);
  EXPECT_EQ(v.code, 2) << v.line;
  EXPECT_NE(v.line.find("mirror-a/main silent for 2d"), std::string::npos) << v.line;
}

// A broker running with --insecure-plaintext says so in the reply; the table
// warns right under its first line and the JSON carries the flag.
TEST(StatusFormat, APlaintextBrokerIsAWarningInTheTableAndAFlagInTheJson) {
  v1::StatusReply status = SampleStatus();
  const std::string curve_table = FormatStatusTable(status, kNow);
  EXPECT_EQ(curve_table.find("INSECURE"), std::string::npos) << curve_table;
  EXPECT_EQ(nlohmann::json::parse(FormatStatusJson(status)).at("insecure_plaintext"), false);

  status.set_insecure_plaintext(true);
  const std::vector<std::string> lines = Lines(FormatStatusTable(status, kNow));
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[1].rfind("WARNING: INSECURE: this broker runs with --insecure-plaintext", 0), 0u)
      << lines[1];
  EXPECT_EQ(nlohmann::json::parse(FormatStatusJson(status)).at("insecure_plaintext"), true);
  const std::vector<std::string> compact = Lines(FormatStatusCompact(status, kNow));
  ASSERT_GE(compact.size(), 2u);
  EXPECT_EQ(compact[1].rfind("WARNING: INSECURE: this broker runs with --insecure-plaintext", 0),
            0u)
      << compact[1];
}

}  // namespace
}  // namespace mirrorcast::testing
