#include "core/cli/options.h"

#include <cmath>
#include <exception>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include "core/base/log.h"
#include "core/base/version.h"

namespace po = boost::program_options;

namespace mirrorcast {

std::optional<po::variables_map> ParseCommandLine(int argc, const char* const* argv,
                                                  const ProgramInfo& info,
                                                  const po::options_description& options) {
  po::options_description common("Common options");
  common.add_options()("help,h", "show this help and exit")("version", "show the version and exit")(
      "config", po::value<std::string>(),
      "read options from FILE (one 'name = value' per line, names as on the command line; "
      "the command line wins)")("log-level", po::value<std::string>()->default_value("info"),
                                "trace, debug, info, warning or error");
  po::options_description all;
  all.add(options).add(common);

  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(all).run(), vm);
  if (vm.count("help")) {
    std::cout << "Usage: " << info.usage << "\n\n" << info.summary << "\n\n" << all << "\n";
    return std::nullopt;
  }
  if (vm.count("version")) {
    std::cout << info.name << " " << kVersion << "\n";
    return std::nullopt;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read config file " + path);
    po::store(po::parse_config_file(in, all), vm);
  }
  po::notify(vm);

  auto level = ParseLogLevel(vm["log-level"].as<std::string>());
  if (!level.ok()) throw std::runtime_error(level.status().message());
  InitLogging(info.name, *level);
  return vm;
}

std::vector<std::filesystem::path> PathList(const po::variables_map& vm, const std::string& name) {
  std::vector<std::filesystem::path> out;
  if (vm.count(name)) {
    for (const auto& v : vm[name].as<std::vector<std::string>>()) out.emplace_back(v);
  }
  return out;
}

void ReadTrustFlags(const po::variables_map& vm, std::vector<std::filesystem::path>* trust,
                    std::vector<std::filesystem::path>* root_keys) {
  *trust = PathList(vm, "trust");
  *root_keys = PathList(vm, "root-key");
  if (trust->empty() == root_keys->empty()) {
    throw std::runtime_error("give --trust PUBFILE (fixed keys) or --root-key PUBFILE (key sets)");
  }
}

int RunMain(const char* program, int (*body)(int, char**), int argc, char** argv) {
  try {
    return body(argc, argv);
  } catch (const po::error& e) {
    std::cerr << program << ": error: " << e.what() << "\n"
              << "Try '" << program << " --help'.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 2;
  }
}

std::chrono::milliseconds TimeoutOption(const po::variables_map& vm, const std::string& name) {
  const double seconds = vm[name].as<double>();
  if (!std::isfinite(seconds) || seconds <= 0 || seconds > 86400) {
    throw std::runtime_error("bad --" + name + ": must be between 0 and 86400 seconds");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
}

int ReportConfigCheck(const char* program, const Status& checked) {
  if (!checked.ok()) {
    std::cerr << program << ": configuration error: " << checked.ToString() << "\n";
    return 2;
  }
  std::cout << program << ": configuration OK\n";
  return 0;
}

}  // namespace mirrorcast
