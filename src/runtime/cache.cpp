// The runtime compile cache's plumbing: where it lives, keys, atomic writes, the counters.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <vector>

#include "internal.h"

#ifndef FLEXATTN_SOURCE_INCLUDE_DIR
#define FLEXATTN_SOURCE_INCLUDE_DIR ""
#endif
#ifndef FLEXATTN_INSTALL_INCLUDE_DIR
#define FLEXATTN_INSTALL_INCLUDE_DIR ""
#endif

namespace fs = std::filesystem;

namespace flexattn::detail::runtime {
namespace {
std::atomic<int64_t> g_compiled{0}, g_loaded{0}, g_hits{0};

std::string env(const char* name, bool* set = nullptr) {
  const char* v = std::getenv(name);
  if (set) *set = v != nullptr;
  return v ? std::string(v) : std::string();
}
}  // namespace

uint64_t fnv1a(const std::string& text, uint64_t h) {
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

const std::string& cache_dir() {
  static const std::string dir = [] {
    bool set = false;
    std::string d = env("FLEXATTN_CACHE_DIR", &set);
    if (set && d.empty()) return std::string();
    if (d.empty()) {
      const std::string xdg = env("XDG_CACHE_HOME");
      const std::string home = env("HOME");
      if (!xdg.empty()) d = xdg + "/flexattn";
      else if (!home.empty()) d = home + "/.cache/flexattn";
      else return std::string();
    }
    std::error_code ec;
    fs::create_directories(d, ec);
    return fs::is_directory(d, ec) ? d : std::string();
  }();
  return dir;
}

const std::string& include_dir() {
  static const std::string dir = [] {
    std::string d = env("FLEXATTN_INCLUDE_DIR");
    if (!d.empty()) return d;
    std::error_code ec;
    const std::string src = FLEXATTN_SOURCE_INCLUDE_DIR;
    if (!src.empty() && fs::exists(src + "/flexattn/runtime.h", ec)) return src;
    return std::string(FLEXATTN_INSTALL_INCLUDE_DIR);
  }();
  return dir;
}

const std::string& headers_fingerprint() {
  static const std::string fp = [] {
    std::vector<fs::path> files;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(include_dir(), ec), end; !ec && it != end;
         it.increment(ec)) {
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    uint64_t h = fnv1a(include_dir());
    for (const fs::path& f : files) {
      std::string bytes;
      read_file(f.string(), bytes);
      h = fnv1a(f.string() + "\n" + bytes, h);
    }
    return hex16(h) + ":" + std::to_string(files.size());
  }();
  return fp;
}

bool read_file(const std::string& path, std::string& bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  bytes = ss.str();
  return static_cast<bool>(in) || in.eof();
}

bool write_atomically(const std::string& path, const std::string& bytes) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + hex16(rng());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

namespace {
constexpr size_t kTrailerBytes = 19 + 16 + 1;  // the tag, 16 hex digits, a newline
std::string trailer(const std::string& body, const std::string& key) {
  return "\nflexattn-rt-check " + hex16(fnv1a(key, fnv1a(body))) + "\n";
}
}  // namespace

bool write_entry(const std::string& path, const std::string& body, const std::string& key) {
  return write_atomically(path, body + trailer(body, key));
}

bool read_entry(const std::string& path, const std::string& key, std::string& body) {
  std::string bytes;
  if (!read_file(path, bytes) || bytes.size() < kTrailerBytes) return false;
  body = bytes.substr(0, bytes.size() - kTrailerBytes);
  return bytes.compare(body.size(), kTrailerBytes, trailer(body, key)) == 0;
}

std::string make_temp_dir() {
  std::string base = env("TMPDIR");
  if (base.empty()) base = "/tmp";
  std::string templ = base + "/flexattn_rt.XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw Error("flexattn: cannot create a temporary directory under " + base +
                " to compile a runtime variant");
  }
  return std::string(buf.data());
}

void remove_tree(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

int run_command(const std::string& command, std::string& output) {
  output.clear();
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

void count_compiled() { g_compiled.fetch_add(1, std::memory_order_relaxed); }
void count_loaded_from_disk() { g_loaded.fetch_add(1, std::memory_order_relaxed); }
void count_memory_hit() { g_hits.fetch_add(1, std::memory_order_relaxed); }

}  // namespace flexattn::detail::runtime

namespace flexattn {

RuntimeCacheStats runtime_cache_stats() {
  using namespace detail::runtime;
  return {g_compiled.load(), g_loaded.load(), g_hits.load()};
}

void clear_runtime_memory_cache() {
  using namespace detail::runtime;
  cpu_forget_modules();
  gpu_forget_modules();
  g_compiled = 0;
  g_loaded = 0;
  g_hits = 0;
}

std::string runtime_cache_dir() { return detail::runtime::cache_dir(); }

}  // namespace flexattn
