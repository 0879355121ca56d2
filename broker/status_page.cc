#include "broker/status_page.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/base/clock.h"
#include "core/base/format.h"
#include "core/base/version.h"

namespace mirrorcast {

namespace {

uint64_t HeadOf(const v1::StatusReply& status, const std::string& repo) {
  for (const auto& r : status.repos()) {
    if (r.repo() == repo) return r.serial();
  }
  return 0;
}

const v1::RepoStatus* RepoStatusOf(const v1::StatusReply& status, const std::string& repo) {
  for (const auto& r : status.repo_status()) {
    if (r.repo() == repo) return &r;
  }
  return nullptr;
}

std::string Health(const v1::StatusReply& status, const v1::MirrorStatus& m) {
  // The broker fills health in; a reply without it (an older broker) is judged here.
  if (!m.health().empty()) return m.health();
  return MirrorHealth(m, HeadOf(status, m.repo()), status.now_unix(),
                      status.silent_after_seconds());
}

// Peer-supplied text on one line (control characters become spaces), cut.
std::string OneLine(const std::string& text, size_t max = 300) {
  std::string out = text.substr(0, max);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  if (text.size() > max) out += "...";
  return out;
}

std::string Age(int64_t now, int64_t then) {
  if (then == 0) return "never";
  if (then > now) return "just now";
  return ShortAge(now - then) + " ago";
}

const char* HealthLabel(const std::string& health) {
  if (health == "in_progress") return "in progress";
  return health.c_str();
}

// Colours per health: text on a light badge; readable in print, too.
const char* HealthColour(const std::string& health) {
  if (health == "applied") return "#1a7f37";
  if (health == "in_progress") return "#0550ae";
  if (health == "behind") return "#9a6700";
  if (health == "stale") return "#bc4c00";
  if (health == "failed") return "#cf222e";
  return "#6e7781";  // silent
}

const char* kSeriesColours[] = {"#0550ae", "#1a7f37", "#8250df", "#bc4c00", "#cf222e", "#6e7781"};

struct Tick {
  double seconds;
  const char* label;
};
constexpr Tick kTicks[] = {{0.01, "10 ms"}, {0.1, "0.1 s"}, {1, "1 s"},
                           {10, "10 s"},    {60, "1 min"},  {600, "10 min"},
                           {3600, "1 h"},   {86400, "1 d"}, {604800, "1 w"}};

std::string Num(double v) {
  char out[32];
  std::snprintf(out, sizeof out, "%.1f", v);
  return out;
}

}  // namespace

std::string MirrorHealth(const v1::MirrorStatus& m, uint64_t head_serial, int64_t now_unix,
                         int64_t silent_after_seconds) {
  const int64_t seen = std::max(m.last_seen_unix(), m.last_ack_unix());
  if (silent_after_seconds > 0 && (seen == 0 || now_unix - seen >= silent_after_seconds)) {
    return "silent";
  }
  if (m.state() == v1::ACK_FAILED || m.state() == v1::ACK_REJECTED) return "failed";
  if (m.state() == v1::ACK_IN_PROGRESS) return "in_progress";
  if (m.state() == v1::ACK_STALE) return "stale";
  if (m.serial() < head_serial) return "behind";
  return "applied";
}

std::string HtmlEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string PrometheusLabelEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string RenderPropagationSvg(const std::vector<v1::SerialPropagation>& serials) {
  constexpr double kWidth = 720, kHeight = 260;
  constexpr double kLeft = 48, kRight = 170, kTop = 14, kBottom = 36;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const size_t shown = std::min<size_t>(serials.size(), std::size(kSeriesColours));
  uint32_t mirrors = 1;
  double longest = 10;  // seconds; the axis runs at least to 10 s
  for (size_t i = 0; i < shown; ++i) {
    const auto& s = serials[i];
    mirrors = std::max<uint32_t>(
        {mirrors, s.mirrors(), static_cast<uint32_t>(std::min(s.reached_ms_size(), 1 << 30))});
    for (int64_t at : s.reached_ms()) {
      longest = std::max(longest, static_cast<double>(at - s.published_ms()) / 1000.0);
    }
  }
  const double x_min = 0.01;
  double x_max = kTicks[std::size(kTicks) - 1].seconds;
  for (const Tick& t : kTicks) {
    if (t.seconds >= longest) {
      x_max = t.seconds;
      break;
    }
  }
  auto x_of = [&](double seconds) {
    const double s = std::clamp(seconds, x_min, x_max);
    return kLeft +
           plot_w * (std::log10(s) - std::log10(x_min)) / (std::log10(x_max) - std::log10(x_min));
  };
  auto y_of = [&](double count) { return kTop + plot_h * (1.0 - count / mirrors); };

  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"propagation\" width=\"" << kWidth
      << "\" height=\"" << kHeight << "\" viewBox=\"0 0 " << kWidth << " " << kHeight
      << "\" role=\"img\" font-family=\"sans-serif\" font-size=\"11\">";
  svg << "<title>Mirrors that had each serial, by time since it was published</title>";
  // Axes and grid.
  svg << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << plot_w << "\" height=\""
      << plot_h << "\" fill=\"#fafbfc\" stroke=\"#d0d7de\"/>";
  for (const Tick& t : kTicks) {
    if (t.seconds < x_min || t.seconds > x_max) continue;
    const double x = x_of(t.seconds);
    svg << "<line x1=\"" << Num(x) << "\" y1=\"" << kTop << "\" x2=\"" << Num(x) << "\" y2=\""
        << kTop + plot_h << "\" stroke=\"#d0d7de\" stroke-dasharray=\"2,3\"/>";
    svg << "<text x=\"" << Num(x) << "\" y=\"" << kTop + plot_h + 14 << "\" text-anchor=\"middle\">"
        << t.label << "</text>";
  }
  for (uint32_t c : {0u, (mirrors + 1) / 2, mirrors}) {
    const double y = y_of(c);
    svg << "<line x1=\"" << kLeft - 4 << "\" y1=\"" << Num(y) << "\" x2=\"" << kLeft << "\" y2=\""
        << Num(y) << "\" stroke=\"#57606a\"/>";
    svg << "<text x=\"" << kLeft - 7 << "\" y=\"" << Num(y + 4) << "\" text-anchor=\"end\">" << c
        << "</text>";
  }
  svg << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << kHeight - 4
      << "\" text-anchor=\"middle\">time since publish (log scale)</text>";
  svg << "<text x=\"12\" y=\"" << kTop + plot_h / 2
      << "\" text-anchor=\"middle\" transform=\"rotate(-90 12 " << kTop + plot_h / 2
      << ")\">mirrors</text>";
  // One step line per serial, oldest drawn first so the newest is on top.
  for (size_t k = shown; k-- > 0;) {
    const auto& s = serials[k];
    std::vector<double> delays;
    for (int64_t at : s.reached_ms()) {
      delays.push_back(std::max<double>(0, static_cast<double>(at - s.published_ms()) / 1000.0));
    }
    std::sort(delays.begin(), delays.end());
    std::ostringstream points;
    double y = y_of(0);
    points << Num(x_of(x_min)) << "," << Num(y);
    for (size_t i = 0; i < delays.size(); ++i) {
      const double x = x_of(delays[i]);
      points << " " << Num(x) << "," << Num(y);
      y = y_of(static_cast<double>(i + 1));
      points << " " << Num(x) << "," << Num(y);
    }
    points << " " << Num(x_of(x_max)) << "," << Num(y);
    svg << "<polyline data-serial=\"" << s.serial() << "\" fill=\"none\" stroke=\""
        << kSeriesColours[k] << "\" stroke-width=\"" << (k == 0 ? 2.5 : 1.5) << "\" points=\""
        << points.str() << "\"/>";
    const double ly = kTop + 8 + 16.0 * static_cast<double>(k);
    const double lx = kLeft + plot_w + 12;
    svg << "<line x1=\"" << lx << "\" y1=\"" << Num(ly) << "\" x2=\"" << lx + 18 << "\" y2=\""
        << Num(ly) << "\" stroke=\"" << kSeriesColours[k] << "\" stroke-width=\"2.5\"/>";
    svg << "<text x=\"" << lx + 24 << "\" y=\"" << Num(ly + 4) << "\">serial " << s.serial() << ": "
        << delays.size() << " of " << std::max<uint32_t>(s.mirrors(), delays.size()) << "</text>";
  }
  if (shown == 0) {
    svg << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << kTop + plot_h / 2
        << "\" text-anchor=\"middle\">nothing published since the broker started recording</text>";
  }
  svg << "</svg>";
  return svg.str();
}

std::string RenderStatusHtml(const v1::StatusReply& status) {
  const int64_t now = status.now_unix();
  std::map<std::string, size_t> counts;
  for (const auto& m : status.mirrors()) ++counts[Health(status, m)];

  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta http-equiv=\"refresh\" content=\"10\">"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    << "<title>mirrorcast: " << HtmlEscape(status.broker_id()) << "</title><style>"
    << "body{font-family:sans-serif;margin:1.5em;color:#1f2328;background:#fff}"
       "h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin-top:1.6em}"
       "table{border-collapse:collapse;margin:.4em 0}"
       "th,td{padding:.25em .7em;border-bottom:1px solid #d0d7de;text-align:left;"
       "vertical-align:top}th{background:#f6f8fa}td.n{text-align:right;"
       "font-variant-numeric:tabular-nums}"
       ".badge{display:inline-block;padding:0 .5em;border-radius:1em;color:#fff;"
       "font-size:.9em;white-space:nowrap}.why{color:#57606a;font-size:.9em}"
       ".warn{background:#ffebe9;border:1px solid #cf222e;padding:.5em 1em;font-weight:bold}"
       ".meta{color:#57606a}.summary span{margin-right:1.2em}"
       "tr.health-failed td{background:#fff5f5}tr.health-silent td{color:#57606a}"
    << "</style></head><body>\n";
  h << "<h1>mirrorcast: " << HtmlEscape(status.broker_id()) << "</h1>\n";
  h << "<p class=\"meta\">as of " << FormatUtc(now) << " &middot; a mirror not heard from for "
    << status.silent_after_seconds() << " s is silent &middot; version " << kVersion
    << " &middot; <a href=\"status.json\">JSON</a> &middot; <a href=\"metrics\">metrics</a></p>\n";
  if (status.insecure_plaintext()) {
    h << "<p class=\"warn\" id=\"insecure\">WARNING: INSECURE: this broker runs with "
         "--insecure-plaintext (no CURVE, no allow-list): anyone who reaches its ports may "
         "publish and ACK.</p>\n";
  }
  h << "<p class=\"summary\" id=\"summary\">" << status.mirrors_size() << " mirror rows: ";
  for (const char* health : kMirrorHealths) {
    h << "<span><span class=\"badge\" style=\"background:" << HealthColour(health) << "\">"
      << HealthLabel(health) << "</span> " << counts[health] << "</span>";
  }
  h << "</p>\n";

  h << "<h2>Repositories</h2>\n<table id=\"repos\"><thead><tr><th>repo</th><th>latest "
       "serial</th><th>published</th><th>entries</th><th>mirrors at it</th></tr></thead><tbody>\n";
  if (status.repos_size() == 0) h << "<tr><td colspan=\"5\">nothing published yet</td></tr>\n";
  for (const auto& r : status.repos()) {
    const v1::RepoStatus* rs = RepoStatusOf(status, r.repo());
    size_t total = 0, at_head = 0;
    for (const auto& m : status.mirrors()) {
      if (m.repo() != r.repo()) continue;
      ++total;
      if (m.serial() >= r.serial()) ++at_head;
    }
    h << "<tr data-repo=\"" << HtmlEscape(r.repo()) << "\"><td>" << HtmlEscape(r.repo())
      << "</td><td class=\"n\">" << r.serial() << "</td><td>"
      << (rs && rs->published_unix()
              ? FormatUtc(rs->published_unix()) + " (" + Age(now, rs->published_unix()) + ")"
              : std::string("?"))
      << "</td><td class=\"n\">" << (rs ? std::to_string(rs->manifest_entries()) : "?")
      << "</td><td class=\"n\">" << at_head << " of " << total << "</td></tr>\n";
  }
  h << "</tbody></table>\n";

  h << "<h2>Mirrors</h2>\n<table id=\"mirrors\"><thead><tr><th>mirror</th><th>repo</th>"
       "<th>serial</th><th>lag</th><th>state</th><th>last seen</th><th>last apply</th>"
       "<th>fetched</th><th>reused</th></tr></thead><tbody>\n";
  if (status.mirrors_size() == 0)
    h << "<tr><td colspan=\"9\">no mirror has reported yet</td></tr>\n";
  for (const auto& m : status.mirrors()) {
    const std::string health = Health(status, m);
    std::string lag = "-";
    if (m.lag_serials() > 0) {
      lag = std::to_string(m.lag_serials()) + (m.lag_serials() == 1 ? " serial" : " serials");
      if (m.lag_seconds() > 0) lag += ", " + ShortAge(m.lag_seconds());
    }
    std::string why;
    if (health == "failed" || health == "stale" || health == "in_progress" ||
        (health == "silent" && !m.error().empty())) {
      why = m.error();
    }
    if (health == "in_progress" && m.target_serial() > 0) {
      why = "to serial " + std::to_string(m.target_serial()) + (why.empty() ? "" : ": " + why);
    }
    h << "<tr class=\"health-" << health << "\" data-mirror=\"" << HtmlEscape(m.mirror_id())
      << "\" data-repo=\"" << HtmlEscape(m.repo()) << "\" data-health=\"" << health
      << "\" data-serial=\"" << m.serial() << "\" data-via=\"" << HtmlEscape(m.via()) << "\"><td>"
      << HtmlEscape(OneLine(m.mirror_id(), 80));
    // Behind relays: the path it reports through (the network as a tree).
    if (!m.via().empty())
      h << "<span class=\"why\"> via " << HtmlEscape(OneLine(m.via(), 120)) << "</span>";
    h << "</td><td>" << HtmlEscape(m.repo()) << "</td><td class=\"n\">" << m.serial() << "</td><td>"
      << lag << "</td><td><span class=\"badge\" style=\"background:" << HealthColour(health)
      << "\">" << HealthLabel(health) << "</span>";
    if (!why.empty()) h << " <span class=\"why\">" << HtmlEscape(OneLine(why)) << "</span>";
    h << "</td><td>" << Age(now, m.last_seen_unix()) << "</td><td>"
      << (m.last_ack_unix() ? Age(now, m.last_ack_unix()) + ", " + ShortDelay(m.seconds())
                            : std::string("-"))
      << "</td><td class=\"n\">" << HumanBytes(static_cast<double>(m.bytes_fetched()))
      << "</td><td class=\"n\">" << HumanBytes(static_cast<double>(m.bytes_reused()))
      << "</td></tr>\n";
  }
  h << "</tbody></table>\n";

  h << "<h2>Propagation</h2>\n<p class=\"meta\">How many mirrors had each of the newest serials "
       "how long after it was published (a mirror that catches up over several serials counts "
       "for each).</p>\n";
  std::set<std::string> repos_with;
  for (const auto& p : status.propagation()) repos_with.insert(p.repo());
  if (repos_with.empty()) h << "<p>nothing published since the broker started recording.</p>\n";
  for (const std::string& repo : repos_with) {
    std::vector<v1::SerialPropagation> serials;
    for (const auto& p : status.propagation()) {
      if (p.repo() == repo) serials.push_back(p);
    }
    h << "<h3>" << HtmlEscape(repo) << "</h3>\n<div class=\"plot\" data-repo=\"" << HtmlEscape(repo)
      << "\">" << RenderPropagationSvg(serials) << "</div>\n";
    h << "<table class=\"propagation\" data-repo=\"" << HtmlEscape(repo)
      << "\"><thead><tr><th>serial</th><th>published</th><th>mirrors that had it</th>"
         "<th>half of them after</th><th>all of them after</th></tr></thead><tbody>\n";
    for (const auto& s : serials) {
      std::vector<double> d;
      for (int64_t at : s.reached_ms()) {
        d.push_back(std::max<double>(0, static_cast<double>(at - s.published_ms()) / 1000.0));
      }
      std::sort(d.begin(), d.end());
      const uint32_t of = std::max<uint32_t>(s.mirrors(), static_cast<uint32_t>(d.size()));
      h << "<tr data-serial=\"" << s.serial() << "\"><td class=\"n\">" << s.serial() << "</td><td>"
        << FormatUtc(s.published_ms() / 1000) << "</td><td class=\"n\">" << d.size() << " of " << of
        << "</td><td>"
        << (of > 0 && d.size() * 2 >= of ? ShortDelay(d[(of + 1) / 2 - 1]) : std::string("-"))
        << "</td><td>" << (of > 0 && d.size() >= of ? ShortDelay(d.back()) : std::string("-"))
        << "</td></tr>\n";
    }
    h << "</tbody></table>\n";
  }
  h << "</body></html>\n";
  return h.str();
}

std::string RenderStatusJson(const v1::StatusReply& status) {
  using nlohmann::json;
  json out;
  out["broker_id"] = status.broker_id();
  out["version"] = kVersion;
  out["now_unix"] = status.now_unix();
  out["silent_after_seconds"] = status.silent_after_seconds();
  out["insecure_plaintext"] = status.insecure_plaintext();
  out["repos"] = json::array();
  for (const auto& r : status.repos()) {
    json j;
    j["repo"] = r.repo();
    j["serial"] = r.serial();
    if (const v1::RepoStatus* rs = RepoStatusOf(status, r.repo())) {
      j["published_unix"] = rs->published_unix();
      j["manifest_entries"] = rs->manifest_entries();
    }
    out["repos"].push_back(std::move(j));
  }
  out["mirrors"] = json::array();
  for (const auto& m : status.mirrors()) {
    json j;
    j["mirror_id"] = m.mirror_id();
    j["via"] = m.via();
    j["repo"] = m.repo();
    j["serial"] = m.serial();
    j["target_serial"] = m.target_serial();
    j["health"] = Health(status, m);
    j["ack_state"] = v1::AckState_Name(m.state());
    j["lag_serials"] = m.lag_serials();
    j["lag_seconds"] = m.lag_seconds();
    j["last_seen_unix"] = m.last_seen_unix();
    j["last_ack_unix"] = m.last_ack_unix();
    j["bytes_fetched"] = m.bytes_fetched();
    j["bytes_reused"] = m.bytes_reused();
    j["seconds"] = m.seconds();
    j["error"] = m.error();
    out["mirrors"].push_back(std::move(j));
  }
  out["propagation"] = json::array();
  for (const auto& p : status.propagation()) {
    json j;
    j["repo"] = p.repo();
    j["serial"] = p.serial();
    j["published_ms"] = p.published_ms();
    j["mirrors"] = p.mirrors();
    json delays = json::array();
    for (int64_t at : p.reached_ms()) delays.push_back(at - p.published_ms());
    j["reached_after_ms"] = std::move(delays);
    out["propagation"].push_back(std::move(j));
  }
  // Replacement of invalid UTF-8: peer-supplied error texts are not trusted to be valid.
  return out.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string RenderMetrics(const v1::StatusReply& status) {
  std::ostringstream o;
  auto family = [&](const char* name, const char* type, const char* help) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  };
  auto mirror_labels = [](const v1::MirrorStatus& m) {
    return "repo=\"" + PrometheusLabelEscape(m.repo()) + "\",mirror=\"" +
           PrometheusLabelEscape(m.mirror_id()) + "\"";
  };
  family("mirrorcast_build_info", "gauge", "The broker's version and id (always 1).");
  o << "mirrorcast_build_info{version=\"" << kVersion << "\",broker=\""
    << PrometheusLabelEscape(status.broker_id()) << "\",insecure_plaintext=\""
    << (status.insecure_plaintext() ? "true" : "false") << "\"} 1\n";

  family("mirrorcast_repo_serial", "gauge", "The latest published serial of the repo.");
  for (const auto& r : status.repos()) {
    o << "mirrorcast_repo_serial{repo=\"" << PrometheusLabelEscape(r.repo()) << "\"} " << r.serial()
      << "\n";
  }
  family("mirrorcast_repo_published_timestamp_seconds", "gauge",
         "When the repo's latest serial was published (Unix time).");
  for (const auto& r : status.repo_status()) {
    o << "mirrorcast_repo_published_timestamp_seconds{repo=\"" << PrometheusLabelEscape(r.repo())
      << "\"} " << r.published_unix() << "\n";
  }
  family("mirrorcast_repo_manifest_entries", "gauge",
         "Entries (files, directories, links) in the repo's latest manifest.");
  for (const auto& r : status.repo_status()) {
    o << "mirrorcast_repo_manifest_entries{repo=\"" << PrometheusLabelEscape(r.repo()) << "\"} "
      << r.manifest_entries() << "\n";
  }
  family("mirrorcast_repo_mirrors", "gauge", "Mirrors of the repo by health.");
  {
    std::map<std::string, std::map<std::string, size_t>> by_repo;
    for (const auto& r : status.repos()) by_repo[r.repo()];
    for (const auto& m : status.mirrors()) ++by_repo[m.repo()][Health(status, m)];
    for (auto& [repo, counts] : by_repo) {
      for (const char* health : kMirrorHealths) {
        o << "mirrorcast_repo_mirrors{repo=\"" << PrometheusLabelEscape(repo) << "\",health=\""
          << health << "\"} " << counts[health] << "\n";
      }
    }
  }
  // One gauge per mirror: its family header, then a sample per mirror.
  auto mirror_gauge = [&](const char* name, const char* help, auto value) {
    family(name, "gauge", help);
    for (const auto& m : status.mirrors()) {
      o << name << "{" << mirror_labels(m) << "} " << value(m) << "\n";
    }
  };
  using M = v1::MirrorStatus;
  mirror_gauge("mirrorcast_mirror_serial", "The serial the mirror's tree is at.",
               [](const M& m) { return m.serial(); });
  mirror_gauge("mirrorcast_mirror_lag_serials",
               "Serials between the repo's latest and the mirror's.",
               [](const M& m) { return m.lag_serials(); });
  mirror_gauge("mirrorcast_mirror_lag_seconds",
               "Seconds since the first serial the mirror lacks was published (0 at the latest).",
               [](const M& m) { return m.lag_seconds(); });
  mirror_gauge("mirrorcast_mirror_last_seen_timestamp_seconds",
               "When the mirror last polled or ACKed (Unix time; 0: never).",
               [](const M& m) { return m.last_seen_unix(); });
  mirror_gauge("mirrorcast_mirror_last_ack_timestamp_seconds",
               "When the mirror last ACKed (Unix time; 0: never).",
               [](const M& m) { return m.last_ack_unix(); });
  family("mirrorcast_mirror_info", "gauge",
         "Always 1; `via` is the path of relays the mirror reports through (\"\": directly).");
  for (const auto& m : status.mirrors()) {
    o << "mirrorcast_mirror_info{" << mirror_labels(m) << ",via=\""
      << PrometheusLabelEscape(m.via()) << "\"} 1\n";
  }
  family("mirrorcast_mirror_health", "gauge",
         "1 for the mirror's health (applied, in_progress, failed, stale, behind, silent), 0 for "
         "the others.");
  for (const auto& m : status.mirrors()) {
    const std::string health = Health(status, m);
    for (const char* h : kMirrorHealths) {
      o << "mirrorcast_mirror_health{" << mirror_labels(m) << ",health=\"" << h << "\"} "
        << (health == h ? 1 : 0) << "\n";
    }
  }
  mirror_gauge("mirrorcast_mirror_last_apply_fetched_bytes",
               "Content bytes the mirror fetched for its last apply.",
               [](const M& m) { return m.bytes_fetched(); });
  mirror_gauge("mirrorcast_mirror_last_apply_reused_bytes",
               "Bytes the mirror took from files it already had for its last apply.",
               [](const M& m) { return m.bytes_reused(); });
  mirror_gauge("mirrorcast_mirror_last_apply_seconds", "Wall time of the mirror's last apply.",
               [](const M& m) { return m.seconds(); });
  return o.str();
}

}  // namespace mirrorcast
