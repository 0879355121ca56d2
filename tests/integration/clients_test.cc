// Real repository clients against a mirror that receives a stream of pushed
// updates, with the subscriber's default settings: `dnf` against a
// createrepo_c repository and `apt` against an apt-ftparchive repository,
// both served from the mirror's tree by a real nginx on loopback.
//
// What used to break them (issue 8): a client fetches metadata, the next
// update lands and deletes the packages (and metadata files) the old metadata
// named, and the client's downloads fail ("all mirrors were already tried",
// 404, "File has unexpected size ... Mirror sync in progress?"). Every round
// here does exactly that, deterministically, and a second phase runs both
// clients in a loop while updates stream in; every client run must succeed.
//
// Needs nginx, createrepo_c, rpmbuild, dnf, apt-ftparchive and dpkg-deb:
// `make test` installs them (deploy/install-deps.sh).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/cluster.h"
#include "tests/support/process.h"

namespace mirrorcast::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr int kRounds = 6;         // deterministic rounds (fetch, update, download)
constexpr int kStreamUpdates = 5;  // updates while both clients loop

RunResult MustRun(const std::vector<std::string>& argv, std::chrono::seconds timeout = 120s) {
  RunResult r = mirrorcast::testing::Run(argv, timeout);
  if (r.exit_code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("failed (" + std::to_string(r.exit_code) + "): " + cmd + "\n" + r.out +
                             r.err);
  }
  return r;
}

// Runs a shell pipeline (for `apt-ftparchive ... > file`).
RunResult MustShell(const std::string& script) {
  return MustRun({SystemProgram("bash"), "-ceu", script});
}

bool Accepts(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// nginx serving `root` on 127.0.0.1, in the foreground, all its files under `dir`.
class Nginx {
 public:
  Nginx(const fs::path& dir, const fs::path& root) {
    fs::create_directories(dir / "tmp");
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = FreeLoopbackPort();
      const fs::path conf = dir / "nginx.conf";
      std::ofstream(conf) << "daemon off;\nmaster_process off;\nworker_processes 1;\n"
                          << "error_log " << (dir / "error.log").string() << ";\n"
                          << "pid " << (dir / "nginx.pid").string() << ";\n"
                          << "events { worker_connections 128; }\n"
                          << "http {\n  access_log " << (dir / "access.log").string() << ";\n"
                          << "  client_body_temp_path " << (dir / "tmp").string() << ";\n"
                          << "  proxy_temp_path " << (dir / "tmp").string() << ";\n"
                          << "  fastcgi_temp_path " << (dir / "tmp").string() << ";\n"
                          << "  uwsgi_temp_path " << (dir / "tmp").string() << ";\n"
                          << "  scgi_temp_path " << (dir / "tmp").string() << ";\n"
                          << "  default_type application/octet-stream;\n"
                          << "  server {\n    listen 127.0.0.1:" << port_ << ";\n"
                          << "    root " << root.string() << ";\n  }\n}\n";
      process_ = std::make_unique<ChildProcess>();
      process_->Start({SystemProgram("nginx"), "-e", (dir / "error.log").string(), "-p",
                       dir.string(), "-c", conf.string()},
                      dir / "nginx.out");
      const auto deadline = std::chrono::steady_clock::now() + 10s;
      while (std::chrono::steady_clock::now() < deadline && process_->Running()) {
        if (Accepts(port_)) return;
        std::this_thread::sleep_for(20ms);
      }
      process_->Stop(5s);  // the port was taken meanwhile: another one
    }
    throw std::runtime_error("nginx did not start (see " + (dir / "error.log").string() + ")");
  }
  ~Nginx() {
    if (process_) process_->Stop(5s);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

// The origin's repositories: rpm/ (createrepo_c) and deb/ (apt-ftparchive,
// dists/stable/main/binary-amd64), packages named mc-N.
class OriginRepos {
 public:
  OriginRepos(fs::path tree, fs::path work) : tree_(std::move(tree)), work_(std::move(work)) {
    fs::create_directories(tree_ / "rpm/Packages");
    fs::create_directories(tree_ / "deb/pool/main");
    fs::create_directories(tree_ / "deb/dists/stable/main/binary-amd64");
  }

  // Adds package mc-N (an .rpm and a .deb) of `bytes` bytes of content.
  void Add(int n, size_t bytes) {
    const std::string name = "mc-" + std::to_string(n);
    const fs::path top = work_ / ("rpmbuild-" + name);
    fs::create_directories(top / "SPECS");
    const fs::path spec = top / "SPECS" / (name + ".spec");
    std::ofstream(spec) << "Name: " << name << "\nVersion: 1.0\nRelease: 1\n"
                        << "Summary: mirrorcast client test package\nLicense: none\n"
                        << "BuildArch: noarch\n%description\ntest package " << n << "\n"
                        << "%install\nmkdir -p %{buildroot}/usr/share/mc\n"
                        << "head -c " << bytes << " /dev/urandom > %{buildroot}/usr/share/mc/"
                        << name << "\n%files\n/usr/share/mc/" << name << "\n";
    MustRun({SystemProgram("rpmbuild"), "-bb", "--quiet", "--define", "_topdir " + top.string(),
             "--define", "_rpmdir " + (top / "out").string(), spec.string()});
    fs::copy_file(top / "out/noarch" / (name + "-1.0-1.noarch.rpm"),
                  tree_ / "rpm/Packages" / (name + "-1.0-1.noarch.rpm"));
    fs::remove_all(top);

    const fs::path src = work_ / ("deb-" + name);
    fs::create_directories(src / "DEBIAN");
    fs::create_directories(src / "usr/share/mc");
    std::ofstream(src / "DEBIAN/control")
        << "Package: " << name << "\nVersion: 1.0-1\nArchitecture: all\n"
        << "Maintainer: mirrorcast tests <tests@mirrorcast.invalid>\n"
        << "Description: mirrorcast client test package\n";
    MustShell("head -c " + std::to_string(bytes) + " /dev/urandom > '" +
              (src / "usr/share/mc" / name).string() + "'");
    MustRun({SystemProgram("dpkg-deb"), "--root-owner-group", "-b", src.string(),
             (tree_ / "deb/pool/main" / (name + "_1.0-1_all.deb")).string()});
    fs::remove_all(src);
    packages_.insert(name);
  }

  void Remove(int n) {
    const std::string name = "mc-" + std::to_string(n);
    fs::remove(tree_ / "rpm/Packages" / (name + "-1.0-1.noarch.rpm"));
    fs::remove(tree_ / "deb/pool/main" / (name + "_1.0-1_all.deb"));
    packages_.erase(name);
  }

  // Regenerates both repositories' metadata, as release tooling does.
  void Regenerate() {
    MustRun({SystemProgram("createrepo_c"), "-q", "--update", (tree_ / "rpm").string()});
    const fs::path deb = tree_ / "deb";
    MustShell("cd '" + deb.string() +
              "' && apt-ftparchive packages pool > dists/stable/main/binary-amd64/Packages"
              " && gzip -9nkf dists/stable/main/binary-amd64/Packages"
              " && apt-ftparchive -o APT::FTPArchive::Release::Codename=stable"
              " -o APT::FTPArchive::Release::Suite=stable"
              " -o APT::FTPArchive::Release::Components=main"
              " -o APT::FTPArchive::Release::Architectures=amd64"
              " release dists/stable > '" +
              (work_ / "Release").string() + "' && mv '" + (work_ / "Release").string() +
              "' dists/stable/Release");
  }

  const std::set<std::string>& packages() const { return packages_; }

 private:
  fs::path tree_;
  fs::path work_;
  std::set<std::string> packages_;
};

std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// A dnf client with its own install root and cache.
class DnfClient {
 public:
  DnfClient(fs::path dir, std::string url) : dir_(std::move(dir)), url_(std::move(url) + "/rpm") {
    fs::create_directories(dir_ / "root");
  }
  // Fetches fresh metadata.
  void Refresh() { MustRun(Command({"--setopt=metadata_expire=0", "makecache"})); }
  // The packages its cached metadata lists.
  std::vector<std::string> Listed() {
    return Words(
        MustRun(Command({"--setopt=metadata_expire=never", "repoquery", "--qf", "%{name}"})).out);
  }
  // Downloads `names` with the cached metadata (never refreshed).
  void Download(const std::vector<std::string>& names) {
    const fs::path dest = dir_ / "download";
    fs::remove_all(dest);
    std::vector<std::string> args = {"--setopt=metadata_expire=never", "--downloadonly",
                                     "--destdir=" + dest.string(), "install"};
    args.insert(args.end(), names.begin(), names.end());
    MustRun(Command(args));
    for (const auto& n : names) {
      if (!fs::exists(dest / (n + "-1.0-1.noarch.rpm"))) {
        throw std::runtime_error("dnf did not download " + n);
      }
    }
  }

 private:
  std::vector<std::string> Command(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {SystemProgram("dnf"),
                                     "-q",
                                     "-y",
                                     "--installroot=" + (dir_ / "root").string(),
                                     "--releasever=1",
                                     "--setopt=reposdir=/dev/null",
                                     "--setopt=cachedir=" + (dir_ / "cache").string(),
                                     "--setopt=keepcache=0",
                                     "--repofrompath=mc," + url_,
                                     "--repo=mc",
                                     "--setopt=mc.gpgcheck=0"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  fs::path dir_;
  std::string url_;
};

// An apt client with its own lists, cache and sources.list.
class AptClient {
 public:
  AptClient(fs::path dir, const std::string& url) : dir_(std::move(dir)) {
    for (const char* d : {"etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/apt.conf.d",
                          "state/lists/partial", "cache/archives/partial"}) {
      fs::create_directories(dir_ / d);
    }
    std::ofstream(dir_ / "etc/apt/sources.list")
        << "deb [trusted=yes] " << url << "/deb stable main\n";
    std::ofstream(dir_ / "state/status");
  }
  void Refresh() { MustRun(Command({"update"})); }
  std::vector<std::string> Listed() { return Words(MustRun(Cache({"pkgnames", "mc-"})).out); }
  void Download(const std::vector<std::string>& names) {
    const fs::path dest = dir_ / "download";
    fs::remove_all(dest);
    fs::create_directories(dest);
    std::vector<std::string> args = {"download"};
    args.insert(args.end(), names.begin(), names.end());
    std::vector<std::string> argv = Command(args);
    // apt-get download writes to the current directory.
    std::string script = "cd '" + dest.string() + "' && exec";
    for (const auto& a : argv) script += " '" + a + "'";
    MustShell(script);
    for (const auto& n : names) {
      if (!fs::exists(dest / (n + "_1.0-1_all.deb"))) {
        throw std::runtime_error("apt did not download " + n);
      }
    }
  }

 private:
  std::vector<std::string> Options() const {
    return {"-o", "Dir::Etc=" + (dir_ / "etc/apt").string(),
            "-o", "Dir::State=" + (dir_ / "state").string(),
            "-o", "Dir::State::status=" + (dir_ / "state/status").string(),
            "-o", "Dir::Cache=" + (dir_ / "cache").string(),
            "-o", "APT::Architecture=amd64",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root",
            "-o", "Debug::NoLocking=1"};
  }
  std::vector<std::string> Command(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {SystemProgram("apt-get"), "-q"};
    for (const auto& o : Options()) argv.push_back(o);
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  std::vector<std::string> Cache(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {SystemProgram("apt-cache")};
    for (const auto& o : Options()) argv.push_back(o);
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  fs::path dir_;
};

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<std::string> AsVector(const std::set<std::string>& s) { return {s.begin(), s.end()}; }

TEST(RealClients, DnfAndAptNeverFailWhileUpdatesArePushedWithDefaultSettings) {
  Cluster c;
  const fs::path work = c.root() / "work";
  fs::create_directories(work);
  OriginRepos origin(c.origin_tree(), work);
  int next = 0;
  for (; next < 6; ++next) origin.Add(next, 2000 + 500 * next);
  origin.Regenerate();
  c.StartBroker();
  c.PublishOk();
  uint64_t serial = 1;

  ChildProcess subscriber;
  // Nothing but the required flags: the subscriber's default settings.
  subscriber.Start(c.SubscriberCommand("m", c.mirror_tree("m"), c.mirror_state("m")),
                   c.root() / "logs" / "m.log");
  c.WaitForSerial({"m"}, serial);
  Nginx nginx(c.root() / "nginx", c.mirror_tree("m"));
  DnfClient dnf(c.root() / "dnf", nginx.url());
  AptClient apt(c.root() / "apt", nginx.url());

  // One update of the origin: two packages added, the oldest removed, the
  // metadata regenerated, published; returns once the mirror applied it.
  int oldest = 0;
  auto update = [&]() {
    origin.Add(next, 1500 + 300 * next);
    ++next;
    origin.Add(next, 1500 + 300 * next);
    ++next;
    origin.Remove(oldest++);
    origin.Regenerate();
    // A repo this small replaces a large share of its entries per update (a
    // package and every metadata file): over the default 10 % delete guard.
    c.PublishOk({"--max-delete-percent", "60"});
    ++serial;
    c.WaitForSerial({"m"}, serial);
    for (const char* meta : {"rpm/repodata/repomd.xml", "deb/dists/stable/Release"}) {
      std::ifstream a(c.origin_tree() / meta), b(c.mirror_tree("m") / meta);
      std::stringstream sa, sb;
      sa << a.rdbuf();
      sb << b.rdbuf();
      ASSERT_EQ(sa.str(), sb.str()) << meta << " differs at serial " << serial << "\n" << c.Logs();
    }
  };

  int runs = 0;
  // Phase 1: fetch metadata at serial S, let S+1 land (deleting a package
  // and the metadata files S named), then download everything S listed.
  for (int round = 0; round < kRounds; ++round) {
    dnf.Refresh();
    apt.Refresh();
    const std::vector<std::string> listed = AsVector(origin.packages());
    ASSERT_EQ(Sorted(dnf.Listed()), listed);
    ASSERT_EQ(Sorted(apt.Listed()), listed);
    update();
    SCOPED_TRACE("round " + std::to_string(round) + ", mirror at serial " + std::to_string(serial));
    EXPECT_NO_THROW(dnf.Download(listed)) << c.Logs();
    EXPECT_NO_THROW(apt.Download(listed));
    // And with fresh metadata, the new packages.
    dnf.Refresh();
    apt.Refresh();
    EXPECT_EQ(Sorted(dnf.Listed()), AsVector(origin.packages()));
    EXPECT_NO_THROW(dnf.Download(AsVector(origin.packages())));
    EXPECT_NO_THROW(apt.Download(AsVector(origin.packages())));
    runs += 4;
  }

  // Phase 2: both clients loop (metadata, then every listed package) while
  // updates stream in.
  std::atomic<bool> done{false};
  std::atomic<int> stream_runs{0};
  std::vector<std::string> failures;
  std::mutex failures_mu;
  auto loop = [&](auto& client, const char* name) {
    while (!done) {
      try {
        client.Refresh();
        client.Download(client.Listed());
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(failures_mu);
        failures.push_back(std::string(name) + ": " + e.what());
      }
      ++stream_runs;
    }
  };
  std::thread dnf_loop([&] { loop(dnf, "dnf"); });
  std::thread apt_loop([&] { loop(apt, "apt"); });
  for (int i = 0; i < kStreamUpdates; ++i) update();
  std::this_thread::sleep_for(1s);
  done = true;
  dnf_loop.join();
  apt_loop.join();
  runs += stream_runs;

  std::cout << "real clients: " << runs << " client runs (" << 4 * kRounds
            << " fetch-update-download, " << stream_runs << " while " << kStreamUpdates
            << " updates streamed), " << failures.size() << " failures; mirror at serial " << serial
            << "\n";
  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_GT(stream_runs.load(), 2);
  subscriber.Stop(10s);
}

}  // namespace
}  // namespace mirrorcast::testing
