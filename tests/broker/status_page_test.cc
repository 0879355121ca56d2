// The status page's renderings (broker/status_page.h) as pure functions:
// health rules, HTML that names every mirror and escapes what peers sent,
// JSON that parses, the Prometheus exposition format line by line, and the
// propagation plot. The page served by a real broker, loaded in Chromium and
// scraped by Prometheus: tests/integration/status_page_test.cc.
#include "broker/status_page.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace mirrorcast::testing {
namespace {

constexpr int64_t kNow = 1800000000;

v1::MirrorStatus MirrorAt(const std::string& id, uint64_t serial, v1::AckState state,
                          int64_t seen_ago) {
  v1::MirrorStatus m;
  m.set_mirror_id(id);
  m.set_repo("fedora");
  m.set_serial(serial);
  m.set_state(state);
  m.set_last_ack_unix(kNow - seen_ago);
  m.set_last_seen_unix(kNow - seen_ago);
  return m;
}

v1::StatusReply SampleStatus() {
  v1::StatusReply s;
  s.set_broker_id("origin-1");
  s.set_now_unix(kNow);
  s.set_silent_after_seconds(120);
  auto* r = s.add_repos();
  r->set_repo("fedora");
  r->set_serial(7);
  auto* rs = s.add_repo_status();
  rs->set_repo("fedora");
  rs->set_serial(7);
  rs->set_published_unix(kNow - 30);
  rs->set_manifest_entries(1000000);
  const struct {
    const char* id;
    uint64_t serial;
    v1::AckState state;
    int64_t seen_ago;
    const char* error;
  } rows[] = {
      {"mirror-ok", 7, v1::ACK_APPLIED, 5, ""},
      {"mirror-late", 5, v1::ACK_APPLIED, 10, ""},
      {"mirror-broken", 6, v1::ACK_FAILED, 3, "no space left on device <b>"},
      {"mirror-busy", 6, v1::ACK_IN_PROGRESS, 1, "fetching for serial 7: 10 of 20 files"},
      {"mirror-gone", 7, v1::ACK_APPLIED, 500, ""},
      {"mirror-stale", 7, v1::ACK_STALE, 2, "no valid heartbeat"},
      {"<script>alert(1)</script>", 7, v1::ACK_APPLIED, 1, ""},
  };
  for (const auto& row : rows) {
    v1::MirrorStatus m = MirrorAt(row.id, row.serial, row.state, row.seen_ago);
    m.set_error(row.error);
    m.set_lag_serials(7 - row.serial);
    m.set_health(MirrorHealth(m, 7, kNow, 120));
    *s.add_mirrors() = m;
  }
  auto* p = s.add_propagation();
  p->set_repo("fedora");
  p->set_serial(7);
  p->set_published_ms(kNow * 1000 - 30000);
  p->set_mirrors(7);
  for (int64_t d : {120, 450, 900, 2500}) p->add_reached_ms(kNow * 1000 - 30000 + d);
  return s;
}

TEST(MirrorHealthTest, EachStateInItsOrder) {
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 7, v1::ACK_APPLIED, 5), 7, kNow, 120), "applied");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 6, v1::ACK_APPLIED, 5), 7, kNow, 120), "behind");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 6, v1::ACK_IN_PROGRESS, 5), 7, kNow, 120), "in_progress");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 6, v1::ACK_FAILED, 5), 7, kNow, 120), "failed");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 7, v1::ACK_REJECTED, 5), 7, kNow, 120), "failed");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 7, v1::ACK_STALE, 5), 7, kNow, 120), "stale");
  // Silence outranks everything: what a dead mirror last said is old news.
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 7, v1::ACK_APPLIED, 120), 7, kNow, 120), "silent");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 6, v1::ACK_FAILED, 121), 7, kNow, 120), "silent");
  EXPECT_EQ(MirrorHealth(MirrorAt("m", 7, v1::ACK_APPLIED, 119), 7, kNow, 120), "applied");
  // Only polled, never ACKed: judged by its serial.
  v1::MirrorStatus polled = MirrorAt("m", 7, v1::ACK_STATE_UNSPECIFIED, 5);
  polled.set_last_ack_unix(0);
  EXPECT_EQ(MirrorHealth(polled, 7, kNow, 120), "applied");
}

TEST(StatusHtmlTest, EveryMirrorHasARowAndPeerTextIsEscaped) {
  const std::string html = RenderStatusHtml(SampleStatus());
  for (const char* id : {"mirror-ok", "mirror-late", "mirror-broken", "mirror-busy", "mirror-gone",
                         "mirror-stale"}) {
    EXPECT_NE(html.find(std::string("data-mirror=\"") + id + "\""), std::string::npos) << id;
  }
  EXPECT_NE(html.find("data-mirror=\"mirror-broken\" data-repo=\"fedora\" data-health=\"failed\""),
            std::string::npos);
  EXPECT_NE(html.find("data-mirror=\"mirror-gone\" data-repo=\"fedora\" data-health=\"silent\""),
            std::string::npos);
  EXPECT_NE(html.find("data-health=\"in_progress\""), std::string::npos);
  EXPECT_NE(html.find("fetching for serial 7: 10 of 20 files"), std::string::npos);
  EXPECT_NE(html.find("2 serials"), std::string::npos);  // mirror-late's lag
  // What peers sent never becomes markup.
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_EQ(html.find("device <b>"), std::string::npos);
  EXPECT_NE(html.find("device &lt;b&gt;"), std::string::npos);
  // Self-contained: no script, no external reference.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));
  EXPECT_NE(html.find("<svg"), std::string::npos);
}

TEST(StatusHtmlTest, InsecureBrokerIsFlagged) {
  v1::StatusReply s = SampleStatus();
  EXPECT_EQ(RenderStatusHtml(s).find("WARNING: INSECURE"), std::string::npos);
  s.set_insecure_plaintext(true);
  EXPECT_NE(RenderStatusHtml(s).find("WARNING: INSECURE"), std::string::npos);
}

TEST(StatusJsonTest, ParsesAndCarriesEveryMirror) {
  v1::StatusReply s = SampleStatus();
  s.mutable_mirrors(0)->set_error("bad utf-8 \xff\xfe here");
  const auto j = nlohmann::json::parse(RenderStatusJson(s));
  EXPECT_EQ(j["broker_id"], "origin-1");
  ASSERT_EQ(j["mirrors"].size(), 7u);
  std::set<std::string> healths;
  for (const auto& m : j["mirrors"]) healths.insert(m["health"].get<std::string>());
  EXPECT_EQ(healths, (std::set<std::string>{"applied", "behind", "failed", "in_progress", "silent",
                                            "stale"}));
  EXPECT_EQ(j["repos"][0]["serial"], 7);
  EXPECT_EQ(j["propagation"][0]["reached_after_ms"],
            nlohmann::json::parse("[120, 450, 900, 2500]"));
}

TEST(MetricsTest, EveryLineIsValidExpositionFormat) {
  const std::string text = RenderMetrics(SampleStatus());
  // name{label="value",...} number   (label values escaped)
  const std::regex sample(
      R"re(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+$)re");
  const std::regex comment(R"re(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)re");
  std::istringstream lines(text);
  size_t samples = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("#", 0) == 0) {
      EXPECT_TRUE(std::regex_match(line, comment)) << line;
    } else {
      EXPECT_TRUE(std::regex_match(line, sample)) << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 50u);
  EXPECT_NE(text.find("mirrorcast_mirror_serial{repo=\"fedora\",mirror=\"mirror-late\"} 5\n"),
            std::string::npos);
  EXPECT_NE(text.find("mirrorcast_mirror_health{repo=\"fedora\",mirror=\"mirror-broken\","
                      "health=\"failed\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("mirrorcast_repo_mirrors{repo=\"fedora\",health=\"silent\"} 1\n"),
            std::string::npos);
  EXPECT_EQ(PrometheusLabelEscape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(PropagationSvgTest, OneStepLinePerSerialOnALogTimeAxis) {
  v1::StatusReply s = SampleStatus();
  auto* older = s.add_propagation();
  older->set_repo("fedora");
  older->set_serial(6);
  older->set_published_ms(kNow * 1000 - 600000);
  older->set_mirrors(7);
  older->add_reached_ms(kNow * 1000 - 600000 + 90000);  // 90 s: the axis reaches 10 min
  const std::vector<v1::SerialPropagation> serials(s.propagation().begin(), s.propagation().end());
  const std::string svg = RenderPropagationSvg(serials);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("data-serial=\"7\""), std::string::npos);
  EXPECT_NE(svg.find("data-serial=\"6\""), std::string::npos);
  EXPECT_NE(svg.find("serial 7: 4 of 7"), std::string::npos);
  EXPECT_NE(svg.find(">10 min<"), std::string::npos);
  EXPECT_EQ(svg.find(">1 h<"), std::string::npos);
  EXPECT_NE(RenderPropagationSvg({}).find("nothing published"), std::string::npos);
}

}  // namespace
}  // namespace mirrorcast::testing
