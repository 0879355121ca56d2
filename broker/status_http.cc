#include "broker/status_http.h"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

#include "broker/status_page.h"
#include "core/base/log.h"

namespace mirrorcast {

namespace {

constexpr size_t kWorkers = 2;
constexpr size_t kQueuedConnections = 64;

// httplib's own ThreadPool queues every accepted connection without bound; this
// one makes the accept loop wait when kQueuedConnections are waiting, so a
// flood of connections stays in the kernel's backlog instead of in memory
// and file descriptors.
class BoundedPool : public httplib::TaskQueue {
 public:
  BoundedPool() {
    for (size_t i = 0; i < kWorkers; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~BoundedPool() override { shutdown(); }

  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> lock(mu_);
    space_.wait(lock, [&] { return jobs_.size() < kQueuedConnections || stopping_; });
    // After shutdown the job still runs (on this thread): it owns a socket.
    if (stopping_) {
      lock.unlock();
      fn();
      return;
    }
    jobs_.push_back(std::move(fn));
    ready_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ && threads_.empty()) return;
      stopping_ = true;
    }
    ready_.notify_all();
    space_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait(lock, [&] { return !jobs_.empty() || stopping_; });
        if (jobs_.empty()) return;  // stopping, nothing left
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      space_.notify_one();
      fn();
    }
  }

  std::mutex mu_;
  std::condition_variable ready_, space_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

}  // namespace

StatusHttpServer::StatusHttpServer(HostPort listen, Snapshot snapshot)
    : listen_(std::move(listen)), snapshot_(std::move(snapshot)) {}

StatusHttpServer::~StatusHttpServer() { Stop(); }

Status StatusHttpServer::Start() {
  server_ = std::make_unique<httplib::Server>();
  httplib::Server& s = *server_;
  s.new_task_queue = [] { return new BoundedPool(); };
  s.set_read_timeout(5, 0);
  s.set_write_timeout(5, 0);
  s.set_keep_alive_timeout(5);
  s.set_keep_alive_max_count(100);
  s.set_payload_max_length(4096);  // GETs only: no body is read
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content("internal error\n", "text/plain");
  });

  auto page = [this](const char* type, std::string (*render)(const v1::StatusReply&)) {
    return [this, type, render](const httplib::Request&, httplib::Response& res) {
      std::shared_ptr<const v1::StatusReply> status = snapshot_();
      res.set_header("Cache-Control", "no-store");
      res.set_header("X-Content-Type-Options", "nosniff");
      if (!status) {
        res.status = 503;
        res.set_content("the broker is starting\n", "text/plain");
        return;
      }
      res.set_content(render(*status), type);
    };
  };
  s.Get("/", page("text/html; charset=utf-8", &RenderStatusHtml));
  s.Get("/index.html", page("text/html; charset=utf-8", &RenderStatusHtml));
  s.Get("/status.json", page("application/json", &RenderStatusJson));
  s.Get("/metrics", page("text/plain; version=0.0.4; charset=utf-8", &RenderMetrics));
  s.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = snapshot_() != nullptr;
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ok\n" : "starting\n", "text/plain");
  });
  auto not_allowed = [](const httplib::Request&, httplib::Response& res) {
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_content("read-only: only GET and HEAD\n", "text/plain");
  };
  s.Post(".*", not_allowed);
  s.Put(".*", not_allowed);
  s.Delete(".*", not_allowed);
  s.Patch(".*", not_allowed);

  const std::string host = listen_.host == "*" ? "0.0.0.0" : listen_.host;
  int port = listen_.port;
  if (listen_.port == 0) {
    port = s.bind_to_any_port(host);
    if (port <= 0) return Status::Unavailable("--http " + listen_.ToString() + ": cannot bind");
  } else if (!s.bind_to_port(host, listen_.port)) {
    return Status::Unavailable("--http " + listen_.ToString() +
                               ": cannot bind (address in use, or not an address of this host)");
  }
  port_ = static_cast<uint16_t>(port);
  thread_ = std::thread([this] {
    if (!server_->listen_after_bind()) MC_LOG(error) << "status page listener stopped";
  });
  // httplib's stop() does nothing until the listener runs: wait for it, so
  // that a Stop() right after Start() cannot leave the thread listening.
  for (int i = 0; i < 5000 && !server_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server_->is_running()) {
    Stop();
    return Status::Internal("--http " + listen_.ToString() + ": the listener did not start");
  }
  MC_LOG(info) << "status page on http://" << listen_.WithPort(port_).ToString()
               << "/ (also /status.json, /metrics)";
  return Status::Ok();
}

void StatusHttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

}  // namespace mirrorcast
