// What the broker's status page (--http) shows, as pure functions of one
// StatusReply: the HTML page (self-contained: inline CSS and SVG, no
// scripts, no external assets), the JSON of the same, and the Prometheus
// text exposition format. The HTTP server (status_http.h) only routes.
//
// Mirror health, in the order it is decided (docs/operations.md, "Status page"):
//   silent       not heard from (poll or ACK) for silent_after seconds
//   failed       the last apply failed, or the last event was rejected (reason shown)
//   in_progress  an apply is running (its progress shown)
//   stale        the mirror has no valid heartbeat within its limit
//   behind       below the repo's latest serial
//   applied      at the latest serial
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proto/mirrorcast.pb.h"

namespace mirrorcast {

// Health names, as shown and exported.
inline constexpr const char* kMirrorHealths[] = {"applied", "in_progress", "failed",
                                                 "stale",   "behind",      "silent"};

std::string MirrorHealth(const v1::MirrorStatus& mirror, uint64_t head_serial, int64_t now_unix,
                         int64_t silent_after_seconds);

std::string RenderStatusHtml(const v1::StatusReply& status);
std::string RenderStatusJson(const v1::StatusReply& status);
std::string RenderMetrics(const v1::StatusReply& status);

// One repo's propagation view: how many of its mirrors had each serial how
// long after it was published (a step line per serial, time on a log
// scale). `serials` newest first, as in StatusReply.propagation.
std::string RenderPropagationSvg(const std::vector<v1::SerialPropagation>& serials);

// Text made safe for HTML element content and attribute values.
std::string HtmlEscape(const std::string& text);
// A label value in the exposition format: \ " and newline escaped.
std::string PrometheusLabelEscape(const std::string& text);

}  // namespace mirrorcast
