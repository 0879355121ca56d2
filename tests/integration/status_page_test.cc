// The broker's status page (--http) as its users meet it, end to end: a real
// broker and three real subscribers on loopback, one healthy (m1), one
// stopped (m2: silent once --silent-after has passed) and one that refuses
// every new event because it trusts only a key that signed none of them (m3:
// REJECTED, shown as failed). Then
//   - headless Chromium loads the page: every mirror has its row with its
//     health and serial, and a screenshot is kept as
//     BUILD_DIR/test-artifacts/status-page.png;
//   - a real Prometheus scrapes /metrics and a query returns each mirror's
//     serial, the one the broker's control socket reports;
//   - `promtool check metrics` accepts /metrics;
//   - /status.json parses and lists every mirror; a POST is refused (405).
//
// Needs Debian's chromium and prometheus packages: deploy/install-deps.sh
// installs them (`make test` runs it). Without them the test fails; it
// never skips.
#include <httplib.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"
#include "tests/support/tree.h"

#ifndef MIRRORCAST_TEST_ARTIFACTS_DIR
#error "MIRRORCAST_TEST_ARTIFACTS_DIR must name the directory test artifacts are kept in"
#endif

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

const std::vector<std::string> kMirrors = {"m1", "m2", "m3"};

struct HttpReply {
  int status = -1;  // -1: no reply (connection refused, timeout)
  std::string body;
};

HttpReply Http(uint16_t port, const std::string& method, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(5, 0);
  client.set_write_timeout(5, 0);
  httplib::Result r = method == "POST" ? client.Post(path, "x", "text/plain") : client.Get(path);
  if (!r) return {};
  return {r->status, r->body};
}

// The parsed body of a 200 reply that is JSON; nullopt otherwise.
std::optional<json> JsonAt(uint16_t port, const std::string& path) {
  const HttpReply r = Http(port, "GET", path);
  if (r.status != 200) return std::nullopt;
  json j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

// mirror id -> {health, serial} from /status.json.
std::map<std::string, std::pair<std::string, uint64_t>> HealthFromJson(const json& status) {
  std::map<std::string, std::pair<std::string, uint64_t>> out;
  if (!status.contains("mirrors") || !status["mirrors"].is_array()) return out;
  for (const json& m : status["mirrors"]) {
    out[m.value("mirror_id", "")] = {m.value("health", ""), m.value("serial", uint64_t{0})};
  }
  return out;
}

// The row of mirror `id` in an HTML document: its opening <tr ...> tag and
// the text up to its </tr>; empty when there is no such row.
struct Row {
  std::string tag;
  std::string html;
};

Row MirrorRow(const std::string& dom, const std::string& id) {
  const size_t attr = dom.find("data-mirror=\"" + id + "\"");
  if (attr == std::string::npos) return {};
  const size_t begin = dom.rfind("<tr", attr);
  const size_t tag_end = dom.find('>', attr);
  const size_t end = dom.find("</tr>", attr);
  if (begin == std::string::npos || tag_end == std::string::npos || end == std::string::npos) {
    return {};
  }
  return {dom.substr(begin, tag_end + 1 - begin), dom.substr(begin, end - begin)};
}

// The value of attribute `name` in an opening tag; nullopt when absent.
std::optional<std::string> Attribute(const std::string& tag, const std::string& name) {
  const std::string key = " " + name + "=\"";
  const size_t at = tag.find(key);
  if (at == std::string::npos) return std::nullopt;
  const size_t begin = at + key.size();
  const size_t end = tag.find('"', begin);
  if (end == std::string::npos) return std::nullopt;
  return tag.substr(begin, end - begin);
}

// Headless Chromium with its own profile under `dir`, talking to nothing but
// the page it is given (no background, sync or update traffic).
class HeadlessChromium {
 public:
  explicit HeadlessChromium(fs::path dir)
      : program_(SystemProgram("chromium")), dir_(std::move(dir)) {
    fs::create_directories(dir_ / "profile");
  }

  // The DOM after the page loaded, serialized (--dump-dom).
  RunResult DumpDom(const std::string& url) const { return Run({"--dump-dom", url}); }

  // A PNG of the page as a 1280x1400 window shows it.
  RunResult Screenshot(const std::string& url, const fs::path& png) const {
    return Run(
        {"--hide-scrollbars", "--window-size=1280,1400", "--screenshot=" + png.string(), url});
  }

 private:
  RunResult Run(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {
        program_, "--headless",
        "--no-sandbox",  // the tests run as root
        "--disable-gpu",
        // Containers often have a small /dev/shm.
        "--disable-dev-shm-usage", "--user-data-dir=" + (dir_ / "profile").string(),
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions"};
    argv.insert(argv.end(), args.begin(), args.end());
    return mirrorcast::testing::Run(argv, 30s);
  }

  std::string program_;
  fs::path dir_;
};

// A real Prometheus scraping http://127.0.0.1:TARGET/metrics every second,
// its data and config under `dir`, its log at `log`. Ready once Start()
// returns; stopped by the destructor.
class Prometheus {
 public:
  Prometheus(fs::path dir, fs::path log) : dir_(std::move(dir)), log_(std::move(log)) {}
  ~Prometheus() { process_.Stop(5s); }
  Prometheus(const Prometheus&) = delete;
  Prometheus& operator=(const Prometheus&) = delete;

  void Start(uint16_t target_port) {
    const std::string program = SystemProgram("prometheus");
    fs::create_directories(dir_ / "tsdb");
    const fs::path config = dir_ / "prometheus.yml";
    std::ofstream(config) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          << "scrape_configs:\n  - job_name: mirrorcast\n"
                          << "    metrics_path: /metrics\n    static_configs:\n"
                          << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    // Prometheus cannot bind port 0 and report it: pick a free port, and
    // another if someone took it before Prometheus bound it.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreeLoopbackPort();
      process_.Start({program, "--config.file=" + config.string(),
                      "--storage.tsdb.path=" + (dir_ / "tsdb").string(),
                      "--web.listen-address=127.0.0.1:" + std::to_string(port_)},
                     log_);
      const bool ready = WaitUntil(
          [&] { return !process_.Running() || Http(port_, "GET", "/-/ready").status == 200; }, 30s);
      if (ready && process_.Running()) return;
      if (process_.Running()) break;  // alive but not ready in 30 s: do not retry
    }
    process_.Stop(5s);
    throw std::runtime_error("prometheus did not become ready; its log: " + ReadFile(log_));
  }

  // The reply to an instant query, or nullopt if Prometheus gave none.
  std::optional<json> Query(const std::string& promql) const {
    return JsonAt(port_, "/api/v1/query?query=" + httplib::detail::encode_query_param(promql));
  }

 private:
  fs::path dir_;
  fs::path log_;
  uint16_t port_ = 0;
  ChildProcess process_;
};

// mirror id -> serial in a Prometheus instant-query reply for
// mirrorcast_mirror_serial (samples of other repos left out).
std::map<std::string, uint64_t> SerialsFromQuery(const json& reply, const std::string& repo) {
  std::map<std::string, uint64_t> out;
  if (reply.value("status", "") != "success") return out;
  const json& result = reply["data"]["result"];
  if (!result.is_array()) return out;
  for (const json& sample : result) {
    const json& metric = sample["metric"];
    if (metric.value("repo", "") != repo || !sample["value"].is_array() ||
        sample["value"].size() != 2 || !sample["value"][1].is_string()) {
      continue;
    }
    out[metric.value("mirror", "")] = std::stoull(sample["value"][1].get<std::string>());
  }
  return out;
}

// The width and height in a PNG's IHDR; nullopt when `data` is no PNG.
std::optional<std::pair<uint32_t, uint32_t>> PngSize(const std::string& data) {
  static const std::string kSignature = "\x89PNG\r\n\x1a\n";
  if (data.size() < 24 || data.compare(0, 8, kSignature) != 0 || data.compare(12, 4, "IHDR") != 0) {
    return std::nullopt;
  }
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(data[at + i]);
    return v;
  };
  return std::make_pair(be32(16), be32(20));
}

TEST(StatusPage, BrowserPrometheusAndPromtoolSeeEveryMirrorsHealthAndSerial) {
  // Fail now, with what to install, rather than after the cluster ran.
  for (const char* program : {"chromium", "prometheus"}) SystemProgram(program);
  const std::string promtool = SystemProgram("promtool");

  Cluster c;
  MakeSampleRepo(c.origin_tree(), 10, 0);
  const fs::path port_file = c.root() / "http.port";
  c.StartBroker(
      {"--http", "127.0.0.1:0", "--http-port-file", port_file.string(), "--silent-after", "5"});
  const std::string listen = WaitForFile(port_file, 20s);  // "127.0.0.1:PORT"
  const auto http_port = static_cast<uint16_t>(std::stoi(listen.substr(listen.rfind(':') + 1)));
  const std::string url = "http://127.0.0.1:" + std::to_string(http_port) + "/";
  ASSERT_EQ(Http(http_port, "GET", "/healthz").status, 200) << c.Logs();

  for (const auto& id : kMirrors) c.StartSubscriber(id);
  c.PublishOk();
  c.WaitForSerial(kMirrors, 1);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  // m3 comes back trusting only a key that never signs anything: it keeps
  // polling (so it is not silent) and refuses serial 2.
  ASSERT_EQ(c.StopSubscriber("m3"), 0);
  const fs::path unrelated = c.MakeKey("unrelated");
  std::vector<std::string> m3_argv = c.SubscriberArgv("m3", {});
  for (size_t i = 0; i + 1 < m3_argv.size(); ++i) {
    if (m3_argv[i] == "--trust") m3_argv[i + 1] = unrelated.string() + ".pub";
  }
  ChildProcess m3;
  m3.Start(m3_argv, c.root() / "logs" / "m3-untrusting.log");
  // m2 is stopped: silent 5 s after it was last heard from.
  ASSERT_EQ(c.StopSubscriber("m2"), 0);

  WriteFile(c.origin_tree() / "Packages" / "added.rpm", RandomBytes(3000, 2));
  c.PublishOk();
  c.WaitForSerial({"m1"}, 2);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ASSERT_TRUE(WaitUntil(
      [&] {
        auto m = c.Mirror("m3");
        return m && m->state() == v1::ACK_REJECTED;
      },
      30s))
      << "m3 did not refuse serial 2\n"
      << c.Logs();

  // The serials are final now: m1 at 2, m2 and m3 at 1. Prometheus starts
  // scraping while the page waits for m2 to turn silent.
  std::map<std::string, uint64_t> serials;
  const v1::StatusReply reported = c.Status();
  for (const auto& m : reported.mirrors()) {
    if (m.repo() == c.repo()) serials[m.mirror_id()] = m.serial();
  }
  ASSERT_EQ(serials, (std::map<std::string, uint64_t>{{"m1", 2}, {"m2", 1}, {"m3", 1}}));
  Prometheus prometheus(c.root() / "prometheus", c.root() / "logs" / "prometheus.log");
  prometheus.Start(http_port);

  const std::map<std::string, std::pair<std::string, uint64_t>> expected = {
      {"m1", {"applied", 2}}, {"m2", {"silent", 1}}, {"m3", {"failed", 1}}};
  std::map<std::string, std::pair<std::string, uint64_t>> seen;
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto status = JsonAt(http_port, "/status.json");
        if (status) seen = HealthFromJson(*status);
        return seen == expected;
      },
      20s))
      << "/status.json never showed m1 applied, m2 silent, m3 failed\n"
      << c.Logs();

  // The page in a browser.
  const HeadlessChromium chromium(c.root() / "chromium");
  std::string dom;
  std::string why_not;
  const bool page_right = WaitUntil(
      [&] {
        const RunResult r = chromium.DumpDom(url);
        dom = r.out;
        why_not.clear();
        if (r.exit_code != 0) {
          why_not = "chromium --dump-dom exited " + std::to_string(r.exit_code) + ":\n" + r.err;
          return false;
        }
        for (const auto& [id, health_serial] : expected) {
          const Row row = MirrorRow(dom, id);
          if (Attribute(row.tag, "data-health") != health_serial.first ||
              Attribute(row.tag, "data-serial") != std::to_string(health_serial.second)) {
            why_not = "row of " + id + ": " + (row.tag.empty() ? "missing" : row.tag);
            return false;
          }
        }
        return true;
      },
      30s);
  EXPECT_TRUE(page_right) << why_not << "\n" << dom;
  for (const auto& id : kMirrors) {
    const Row row = MirrorRow(dom, id);
    ASSERT_FALSE(row.tag.empty()) << "no row for " << id << "\n" << dom;
    EXPECT_EQ(Attribute(row.tag, "data-repo"), c.repo()) << row.tag;
    EXPECT_EQ(Attribute(row.tag, "class"), "health-" + expected.at(id).first) << row.tag;
  }
  // A failed mirror says why.
  EXPECT_NE(MirrorRow(dom, "m3").html.find("unknown signing key"), std::string::npos)
      << MirrorRow(dom, "m3").html;

  const fs::path png = fs::path(MIRRORCAST_TEST_ARTIFACTS_DIR) / "status-page.png";
  fs::create_directories(png.parent_path());
  fs::remove(png);
  const RunResult shot = chromium.Screenshot(url, png);
  EXPECT_EQ(shot.exit_code, 0) << shot.err;
  ASSERT_TRUE(fs::exists(png)) << "no screenshot at " << png << "\n" << shot.err;
  EXPECT_GT(fs::file_size(png), 0u);
  EXPECT_EQ(PngSize(ReadFile(png)), std::make_pair(1280u, 1400u)) << png;

  // Prometheus has each mirror's serial.
  std::map<std::string, uint64_t> scraped;
  EXPECT_TRUE(WaitUntil(
      [&] {
        auto reply = prometheus.Query("mirrorcast_mirror_serial");
        if (reply) scraped = SerialsFromQuery(*reply, c.repo());
        return scraped == serials;
      },
      30s))
      << "Prometheus never returned the serials the broker reports; last: "
      << ::testing::PrintToString(scraped) << "\n"
      << c.Logs();

  // promtool accepts the exposition (Run gives no stdin: the shell feeds it).
  const HttpReply metrics = Http(http_port, "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  const fs::path metrics_file = c.root() / "metrics.txt";
  WriteFile(metrics_file, metrics.body);
  const RunResult check =
      mirrorcast::testing::Run({SystemProgram("sh"), "-c", "exec \"$0\" check metrics < \"$1\"",
                                promtool, metrics_file.string()},
                               30s);
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err << "\n" << metrics.body;

  // The JSON lists every mirror at its serial (health was waited for above:
  // a single look could catch a mirror between two polls under load).
  const std::optional<json> status = JsonAt(http_port, "/status.json");
  ASSERT_TRUE(status.has_value());
  std::map<std::string, uint64_t> listed;
  for (const auto& [id, health_serial] : HealthFromJson(*status)) listed[id] = health_serial.second;
  EXPECT_EQ(listed, serials) << status->dump(2);
  // The listener is read-only.
  EXPECT_EQ(Http(http_port, "POST", "/").status, 405);

  EXPECT_EQ(m3.Stop(10s), 0) << c.Logs();
}

}  // namespace
}  // namespace mirrorcast::testing
