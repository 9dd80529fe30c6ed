// Test fixtures: a temporary repository on RocksDB or on the in-memory store.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "repo/repository.h"

namespace pgbackfs {

inline std::string MakeTempDir() {
  char tmpl[] = "/tmp/pgbackfs-unit.XXXXXX";
  char* dir = mkdtemp(tmpl);
  EXPECT_NE(dir, nullptr);
  return dir;
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

inline void WriteWholeFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  EXPECT_TRUE(f.good()) << path;
}

inline std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Parameterized over the store: false = RocksDB, true = memory.
class RepoTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    path_ = dir_ + "/repo";
    RepoConfig config;
    ASSERT_TRUE(Repository::Init(path_, config).ok());
    Reopen();
  }
  void TearDown() override {
    repo_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    repo_.reset();
    OpenOptions options;
    options.in_memory = GetParam();
    auto repo = Repository::Open(path_, options);
    ASSERT_TRUE(repo.ok()) << repo.status().ToString();
    repo_ = std::move(repo).value();
  }
  std::string dir_, path_;
  std::unique_ptr<Repository> repo_;
};

inline std::string StoreName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "Memory" : "RocksDb";
}

}  // namespace pgbackfs
