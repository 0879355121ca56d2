// mirrorcast status --broker HOST:PORT [--json]: what a broker knows of its
// repos and of every mirror's last report (built from their ACKs).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>
#include <zmq.hpp>

#include "core/base/clock.h"
#include "core/base/format.h"
#include "core/cli/options.h"
#include "core/cli/transport.h"
#include "core/crypto/sha256.h"
#include "core/net/control_client.h"
#include "core/net/endpoint.h"
#include "tools/commands.h"

namespace po = boost::program_options;

namespace mirrorcast {
namespace {

const char* StateName(v1::AckState state) {
  switch (state) {
    case v1::ACK_APPLIED:
      return "applied";
    case v1::ACK_FAILED:
      return "failed";
    case v1::ACK_REJECTED:
      return "rejected";
    case v1::ACK_STALE:
      return "stale";
    case v1::ACK_IN_PROGRESS:
      return "in_progress";
    default:
      return "unknown";
  }
}

std::string IsoTime(int64_t unix_seconds) { return FormatUtc(unix_seconds); }

std::string Age(int64_t seconds) {
  if (seconds < 0) return "in " + std::to_string(-seconds) + "s";
  return ShortAge(seconds) + " ago";
}

std::string HumanBytes(uint64_t bytes) {
  return mirrorcast::HumanBytes(static_cast<double>(bytes));
}

// Peer-supplied text on one line: control characters become spaces.
std::string OneLine(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text;
}

// Left-aligned columns, two spaces apart; the last column is not padded.
std::string RenderTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

// A recall's reason in a table cell: one line, at most 200 bytes.
std::string ShortReason(const std::string& reason) {
  constexpr size_t kShown = 200;
  if (reason.size() <= kShown) return OneLine(reason);
  return OneLine(reason.substr(0, kShown)) + "...";
}

const v1::RecallWindow* WindowOf(const v1::StatusReply& status, const std::string& repo) {
  for (const v1::RecallWindow& w : status.recall_windows()) {
    if (w.repo() == repo) return &w;
  }
  return nullptr;
}

// The recall published as `serial` of `repo`, if the reply lists it.
const v1::RecallRecord* RecallAt(const v1::StatusReply& status, const std::string& repo,
                                 uint64_t serial) {
  for (const v1::RecallRecord& r : status.recalls()) {
    if (r.repo() == repo && r.serial() == serial) return &r;
  }
  return nullptr;
}

// A repo row's RECALLABLE and NOTE cells: the serials a recall can reach,
// and what the head recalled (`label` + serial + ": " + reason as `shown`).
std::pair<std::string, std::string> RecallCells(
    const v1::StatusReply& status, const v1::RepoSerial& r, const std::string& label,
    const std::function<std::string(const std::string&)>& shown) {
  const v1::RecallWindow* w = WindowOf(status, r.repo());
  std::string recallable = "-";
  if (w != nullptr && w->oldest() != 0) {
    recallable = std::to_string(w->oldest()) + "-" + std::to_string(w->newest());
  }
  std::string note = "-";
  if (w != nullptr && w->has_head_recall() && w->head_recall().serial() == r.serial()) {
    note = label + std::to_string(w->head_recall().recall_of()) + ": " +
           shown(w->head_recall().reason());
  }
  return {recallable, note};
}

std::vector<v1::MirrorStatus> SortedMirrors(const v1::StatusReply& status) {
  std::vector<v1::MirrorStatus> mirrors(status.mirrors().begin(), status.mirrors().end());
  std::sort(mirrors.begin(), mirrors.end(), [](const auto& a, const auto& b) {
    return std::tie(a.mirror_id(), a.repo()) < std::tie(b.mirror_id(), b.repo());
  });
  return mirrors;
}

std::vector<v1::RepoSerial> SortedRepos(const v1::StatusReply& status) {
  std::vector<v1::RepoSerial> repos(status.repos().begin(), status.repos().end());
  std::sort(repos.begin(), repos.end(),
            [](const auto& a, const auto& b) { return a.repo() < b.repo(); });
  return repos;
}

}  // namespace

constexpr const char* kInsecureWarning =
    "WARNING: INSECURE: this broker runs with --insecure-plaintext: no CURVE, no allow-list; "
    "anyone who reaches its ports can subscribe, fetch and ACK as any mirror";

std::string FormatStatusTable(const v1::StatusReply& status, int64_t now_unix) {
  std::ostringstream out;
  out << "broker " << OneLine(status.broker_id()) << " at " << IsoTime(now_unix) << "\n";
  if (status.insecure_plaintext()) out << kInsecureWarning << "\n";
  out << "\n";

  const std::vector<v1::RepoSerial> repos = SortedRepos(status);
  if (repos.empty()) {
    out << "no repos published yet\n";
  } else {
    std::vector<std::vector<std::string>> rows{
        {"REPO", "LATEST SERIAL", "MANIFEST SHA256", "RECALLABLE", "NOTE"}};
    for (const v1::RepoSerial& r : repos) {
      const auto [recallable, note] = RecallCells(status, r, "recall of serial ", ShortReason);
      rows.push_back({OneLine(r.repo()), std::to_string(r.serial()), ToHex(r.manifest_sha256()),
                      recallable, note});
    }
    out << RenderTable(rows);
  }
  out << "\n";
  if (status.recalls_size() > 0) {
    std::vector<v1::RecallRecord> recalls(status.recalls().begin(), status.recalls().end());
    std::sort(recalls.begin(), recalls.end(), [](const auto& a, const auto& b) {
      if (a.repo() != b.repo()) return a.repo() < b.repo();
      return a.serial() > b.serial();  // newest first
    });
    std::vector<std::vector<std::string>> rows{
        {"RECALL", "REPO", "SERIAL", "RESTORES", "PUBLISHED", "KEY", "REASON"}};
    for (const v1::RecallRecord& r : recalls) {
      rows.push_back({"recall", OneLine(r.repo()), std::to_string(r.serial()),
                      "serial " + std::to_string(r.recall_of()),
                      Age(now_unix - r.published_unix()) + " (" + IsoTime(r.published_unix()) + ")",
                      OneLine(r.key_id().substr(0, 16)), ShortReason(r.reason())});
    }
    out << RenderTable(rows) << "\n";
  }

  const std::vector<v1::MirrorStatus> mirrors = SortedMirrors(status);
  if (mirrors.empty()) {
    out << "no mirrors have reported yet\n";
    return out.str();
  }
  std::vector<std::vector<std::string>> rows{{"MIRROR", "VIA", "REPO", "SERIAL", "STATE", "HEALTH",
                                              "LAST SEEN", "LAST ACK", "FETCHED", "SIG SENT",
                                              "REUSED", "SECONDS", "ERROR"}};
  for (const v1::MirrorStatus& m : mirrors) {
    std::string serial = std::to_string(m.serial());
    if (m.target_serial() != 0 && m.target_serial() != m.serial()) {
      serial += " -> " + std::to_string(m.target_serial());
    }
    if (const v1::RecallRecord* r = RecallAt(status, m.repo(), m.serial()); r != nullptr) {
      serial += " (recall of " + std::to_string(r->recall_of()) + ")";
    }
    std::string last_ack = "never";
    if (m.last_ack_unix() != 0) {
      last_ack = Age(now_unix - m.last_ack_unix()) + " (" + IsoTime(m.last_ack_unix()) + ")";
    }
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%.2f", m.seconds());
    std::string last_seen = "never";
    if (m.last_seen_unix() != 0) {
      last_seen = Age(now_unix - m.last_seen_unix()) + " (" + IsoTime(m.last_seen_unix()) + ")";
    }
    rows.push_back(
        {OneLine(m.mirror_id()), m.via().empty() ? "-" : OneLine(m.via()), OneLine(m.repo()),
         serial, StateName(m.state()), m.health().empty() ? "-" : OneLine(m.health()), last_seen,
         last_ack, HumanBytes(m.bytes_fetched()), HumanBytes(m.bytes_signature()),
         HumanBytes(m.bytes_reused()), seconds, m.error().empty() ? "-" : OneLine(m.error())});
  }
  out << RenderTable(rows);
  return out.str();
}

namespace {

// `line` cut to `width` bytes, the cut marked with "...".
std::string FitWidth(std::string line, size_t width) {
  if (line.size() <= width) return line;
  if (width <= 3) return line.substr(0, width);
  return line.substr(0, width - 3) + "...";
}

std::string Cut(const std::string& cell, size_t max) { return FitWidth(OneLine(cell), max); }

uint64_t HeadOf(const v1::StatusReply& status, const std::string& repo) {
  for (const v1::RepoSerial& r : status.repos()) {
    if (r.repo() == repo) return r.serial();
  }
  return 0;
}

std::string CompactAge(int64_t seconds) { return seconds < 0 ? "future" : ShortAge(seconds); }

}  // namespace

std::string FormatStatusCompact(const v1::StatusReply& status, int64_t now_unix, size_t width) {
  std::string out;
  auto emit = [&](const std::string& text) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) out += FitWidth(line, width) + "\n";
    if (text.empty()) out += "\n";
  };
  emit("broker " + Cut(status.broker_id(), 40) + " at " + IsoTime(now_unix));
  if (status.insecure_plaintext()) {
    emit(
        "WARNING: INSECURE: this broker runs with --insecure-plaintext (no CURVE, no "
        "allow-list)");
  }
  emit("");
  const std::vector<v1::RepoSerial> repos = SortedRepos(status);
  if (repos.empty()) {
    emit("no repos published yet");
  } else {
    std::vector<std::vector<std::string>> rows{
        {"REPO", "SERIAL", "MANIFEST", "RECALLABLE", "NOTE"}};
    for (const v1::RepoSerial& r : repos) {
      const auto [recallable, note] = RecallCells(status, r, "recall of ", OneLine);
      rows.push_back({Cut(r.repo(), 20), std::to_string(r.serial()),
                      ToHex(r.manifest_sha256()).substr(0, 12), recallable, note});
    }
    emit(RenderTable(rows));
  }
  if (status.recalls_size() > 0) {
    emit("");
    emit(std::to_string(status.recalls_size()) +
         " recall(s) on record; see --wide for their reasons and keys");
  }
  emit("");
  const std::vector<v1::MirrorStatus> mirrors = SortedMirrors(status);
  if (mirrors.empty()) {
    emit("no mirrors have reported yet");
    return out;
  }
  std::vector<std::vector<std::string>> rows{
      {"MIRROR", "VIA", "REPO", "SERIAL", "BEHIND", "HEALTH", "SEEN", "FETCHED", "NOTE"}};
  for (const v1::MirrorStatus& m : mirrors) {
    const uint64_t head = HeadOf(status, m.repo());
    const std::string behind = head > m.serial() ? std::to_string(head - m.serial()) : "0";
    std::string note = m.error().empty() ? "-" : OneLine(m.error());
    if (const v1::RecallRecord* r = RecallAt(status, m.repo(), m.serial()); r != nullptr) {
      note = "recall of " + std::to_string(r->recall_of()) + (note == "-" ? "" : "; " + note);
    }
    // The broker's health and last-seen time; an older broker sends neither.
    const int64_t seen = m.last_seen_unix() != 0 ? m.last_seen_unix() : m.last_ack_unix();
    rows.push_back({Cut(m.mirror_id(), 24), m.via().empty() ? "-" : Cut(m.via(), 32),
                    Cut(m.repo(), 16), std::to_string(m.serial()), behind,
                    m.health().empty() ? StateName(m.state()) : Cut(m.health(), 11),
                    seen != 0 ? CompactAge(now_unix - seen) : "never",
                    HumanBytes(m.bytes_fetched()), note});
  }
  emit(RenderTable(rows));
  return out;
}

StatusVerdict CheckStatus(const v1::StatusReply& status, int64_t now_unix,
                          const StatusThresholds& t) {
  std::vector<std::string> critical, warning;
  uint64_t max_behind = 0;
  const std::vector<v1::MirrorStatus> mirrors = SortedMirrors(status);
  for (const v1::MirrorStatus& m : mirrors) {
    const std::string who = Cut(m.mirror_id(), 40) + "/" + Cut(m.repo(), 20);
    const uint64_t head = HeadOf(status, m.repo());
    const uint64_t behind = head > m.serial() ? head - m.serial() : 0;
    max_behind = std::max(max_behind, behind);
    // Silence: since the mirror's last poll or ACK (last_seen, from the
    // broker), judged whether or not it is behind: a dead mirror is news
    // before the next publish. An older broker sends only the ACK time, which
    // moves only on publishes, so then silence counts only while behind.
    const bool seen_known = m.last_seen_unix() != 0;
    const int64_t since = seen_known ? m.last_seen_unix() : m.last_ack_unix();
    const int64_t silent = since != 0 ? now_unix - since : 0;
    const bool judge_silence = seen_known || behind > 0;
    if (m.state() == v1::ACK_FAILED || m.state() == v1::ACK_REJECTED) {
      critical.push_back(who + " " + StateName(m.state()) + ": " + Cut(m.error(), 60));
    } else if (behind >= t.crit_behind) {
      critical.push_back(who + " " + std::to_string(behind) + " behind");
    } else if (judge_silence && silent >= t.crit_silent) {
      critical.push_back(who + (behind > 0 ? " behind and" : "") + " silent for " +
                         CompactAge(silent));
    } else if (m.state() == v1::ACK_STALE) {
      warning.push_back(who + " stale: " + Cut(m.error(), 60));
    } else if (behind >= t.warn_behind) {
      warning.push_back(who + " " + std::to_string(behind) + " behind");
    } else if (judge_silence && silent >= t.warn_silent) {
      warning.push_back(who + (behind > 0 ? " behind and" : "") + " silent for " +
                        CompactAge(silent));
    }
  }
  StatusVerdict v;
  v.code = !critical.empty() ? 2 : !warning.empty() ? 1 : 0;
  static constexpr const char* kNames[] = {"OK", "WARNING", "CRITICAL"};
  v.line = std::string("MIRRORCAST ") + kNames[v.code] + " - " + std::to_string(mirrors.size()) +
           " mirror(s)";
  auto list = [&](const char* label, const std::vector<std::string>& items) {
    if (items.empty()) return;
    v.line += ", " + std::to_string(items.size()) + " " + label + " (";
    for (size_t i = 0; i < items.size() && i < 5; ++i) v.line += (i ? "; " : "") + items[i];
    if (items.size() > 5) v.line += "; ...";
    v.line += ")";
  };
  list("critical", critical);
  list("warning", warning);
  v.line += " | mirrors=" + std::to_string(mirrors.size()) +
            " critical=" + std::to_string(critical.size()) +
            " warning=" + std::to_string(warning.size()) +
            " max_behind=" + std::to_string(max_behind);
  return v;
}

std::string FormatStatusJson(const v1::StatusReply& status) {
  nlohmann::json repos = nlohmann::json::array();
  for (const v1::RepoSerial& r : SortedRepos(status)) {
    nlohmann::json repo = {{"repo", r.repo()},
                           {"serial", r.serial()},
                           {"manifest_sha256", ToHex(r.manifest_sha256())}};
    if (const v1::RecallWindow* w = WindowOf(status, r.repo()); w != nullptr) {
      repo["recall_window"] = {
          {"oldest", w->oldest()}, {"newest", w->newest()}, {"keep_versions", w->keep_versions()}};
      if (w->has_head_recall() && w->head_recall().serial() == r.serial()) {
        repo["recall_of"] = w->head_recall().recall_of();
        repo["recall_reason"] = w->head_recall().reason();
      }
    }
    repos.push_back(std::move(repo));
  }
  nlohmann::json recalls = nlohmann::json::array();
  for (const v1::RecallRecord& r : status.recalls()) {
    recalls.push_back({{"repo", r.repo()},
                       {"serial", r.serial()},
                       {"recall_of", r.recall_of()},
                       {"reason", r.reason()},
                       {"published_unix", r.published_unix()},
                       {"key_id", r.key_id()}});
  }
  nlohmann::json mirrors = nlohmann::json::array();
  for (const v1::MirrorStatus& m : SortedMirrors(status)) {
    mirrors.push_back({{"mirror_id", m.mirror_id()},
                       {"via", m.via()},
                       {"repo", m.repo()},
                       {"serial", m.serial()},
                       {"target_serial", m.target_serial()},
                       {"state", StateName(m.state())},
                       {"last_ack_unix", m.last_ack_unix()},
                       {"last_seen_unix", m.last_seen_unix()},
                       {"health", m.health()},
                       {"lag_serials", m.lag_serials()},
                       {"lag_seconds", m.lag_seconds()},
                       {"bytes_fetched", m.bytes_fetched()},
                       {"bytes_signature", m.bytes_signature()},
                       {"bytes_reused", m.bytes_reused()},
                       {"seconds", std::isfinite(m.seconds()) ? m.seconds() : 0.0},
                       {"error", m.error()}});
  }
  nlohmann::json doc = {{"broker_id", status.broker_id()},
                        {"now_unix", status.now_unix()},
                        {"insecure_plaintext", status.insecure_plaintext()},
                        {"repos", std::move(repos)},
                        {"recalls", std::move(recalls)},
                        {"mirrors", std::move(mirrors)}};
  // Peer-supplied strings may not be UTF-8: replace, never throw.
  return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int StatusMain(int argc, char** argv) {
  const ProgramInfo info{
      "mirrorcast status",
      "mirrorcast status --broker HOST:PORT [--wide | --json | --check [thresholds]] "
      "[--timeout S]",
      "Asks a broker for the latest serial of every repo it serves (with the serials a "
      "'mirrorcast recall' can still go back to, and the recalls made) and for the last report "
      "of every mirror (from their ACKs), and prints them as a table that fits 100 columns "
      "(--wide: every column, with reasons, keys and times; --json: one JSON object). "
      "With --check it prints one Nagios/Icinga-style line instead and exits 0 (OK), 1 "
      "(WARNING: a mirror stale, or --warn-behind serials behind, or not heard from (no poll "
      "or ACK) for --warn-silent seconds) or 2 (CRITICAL: a mirror failed or rejected an "
      "update, or --crit-behind serials behind, or silent for --crit-silent seconds). "
      "Its CURVE key (--curve-key) must be on the broker's allow-list as 'admin NAME'. "
      "Exit codes otherwise: 0 printed; 1 the broker refused; 2 usage error; 3 broker "
      "unreachable or timed out (UNKNOWN for --check)."};
  po::options_description options("Status options");
  options.add_options()("broker", po::value<std::string>()->required(),
                        "broker control endpoint, HOST:PORT or [V6]:PORT")(
      "json", po::bool_switch(), "print one JSON object instead of a table")(
      "wide", po::bool_switch(), "print every column, however wide")(
      "check", po::bool_switch(), "print one monitoring line and exit 0/1/2 (OK/WARNING/CRITICAL)")(
      "warn-behind", po::value<uint64_t>()->default_value(StatusThresholds{}.warn_behind),
      "--check: serials behind the head for WARNING")(
      "crit-behind", po::value<uint64_t>()->default_value(StatusThresholds{}.crit_behind),
      "--check: serials behind the head for CRITICAL")(
      "warn-silent", po::value<int64_t>()->default_value(StatusThresholds{}.warn_silent),
      "--check: seconds without a poll or ACK from a mirror for WARNING")(
      "crit-silent", po::value<int64_t>()->default_value(StatusThresholds{}.crit_silent),
      "--check: seconds without a poll or ACK from a mirror for CRITICAL")(
      "timeout", po::value<double>()->default_value(10), "seconds to wait for the broker");
  options.add(ClientTransportOptions());
  auto vm = ParseCommandLine(argc, argv, info, options);
  if (!vm) return 0;
  const ClientTransport transport = ClientTransportFromOptions(*vm, info.name);

  Result<HostPort> broker = ParseHostPort((*vm)["broker"].as<std::string>());
  if (!broker.ok()) throw std::runtime_error("bad --broker: " + broker.status().message());
  if (broker->port == 0) throw std::runtime_error("bad --broker: the port must not be 0");
  const std::chrono::milliseconds timeout = TimeoutOption(*vm);

  zmq::context_t context;
  Result<v1::StatusReply> status = Status::Internal("not asked");
  {
    ControlClient control(context, *broker, transport);
    status = control.GetStatus(timeout);
  }
  if (!status.ok()) {
    const Status& s = status.status();
    const bool unreachable =
        s.code() == Status::Code::kTimeout || s.code() == Status::Code::kUnavailable;
    if ((*vm)["check"].as<bool>()) {
      std::cout << "MIRRORCAST UNKNOWN - broker " << broker->ToString() << ": "
                << OneLine(s.message()) << std::endl;
      return 3;
    }
    if (unreachable) {
      std::cerr << info.name << ": error: " << OneLine(s.message()) << " (waited "
                << std::chrono::duration<double>(timeout).count() << " s)\n";
    } else {
      std::cerr << info.name << ": error: broker " << broker->ToString()
                << " refused: " << OneLine(s.message()) << "\n";
    }
    return unreachable ? 3 : 1;
  }
  const int64_t now = status->now_unix() != 0 ? status->now_unix() : Clock::Real().NowUnix();
  if ((*vm)["check"].as<bool>()) {
    StatusThresholds t;
    t.warn_behind = (*vm)["warn-behind"].as<uint64_t>();
    t.crit_behind = (*vm)["crit-behind"].as<uint64_t>();
    t.warn_silent = (*vm)["warn-silent"].as<int64_t>();
    t.crit_silent = (*vm)["crit-silent"].as<int64_t>();
    const StatusVerdict verdict = CheckStatus(*status, now, t);
    std::cout << verdict.line << std::endl;
    return verdict.code;
  }
  if ((*vm)["json"].as<bool>()) {
    std::cout << FormatStatusJson(*status) << std::endl;
  } else if ((*vm)["wide"].as<bool>()) {
    std::cout << FormatStatusTable(*status, now) << std::flush;
  } else {
    std::cout << FormatStatusCompact(*status, now) << std::flush;
  }
  return 0;
}

}  // namespace mirrorcast
