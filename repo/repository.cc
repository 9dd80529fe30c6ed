#include "repo/repository.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "repo/coding.h"
#include "repo/file_util.h"
#include "repo/json_util.h"

namespace pgbackfs {

namespace {
constexpr char kConfigFile[] = "/pgbackfs.json";
constexpr char kDbDir[] = "/db";
constexpr char kLockFile[] = "/lock";
constexpr off_t kMaxConfigBytes = 64 << 10;
}  // namespace

int RepoConfig::zstd_level() const {
  if (compression == "none") return 0;
  return std::stoi(compression.substr(5));
}

Result<size_t> ParseChunkSize(const std::string& text) {
  size_t pos = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(text, &pos);
  } catch (...) {
    return Status::InvalidArgument("bad chunk size '" + text + "'");
  }
  std::string unit = text.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::tolower(c));
  if (unit == "k" || unit == "kb" || unit == "kib") {
    n <<= 10;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    n <<= 20;
  } else if (!unit.empty() && unit != "b") {
    return Status::InvalidArgument("bad chunk size unit in '" + text + "'");
  }
  if (n < 8192 || n > (1u << 20) || (n & (n - 1)) != 0) {
    return Status::InvalidArgument("chunk size must be a power of two from 8KiB to 1MiB, not '" +
                                   text + "'");
  }
  return static_cast<size_t>(n);
}

Result<std::string> ParseCompression(const std::string& text) {
  if (text == "none") return text;
  if (text == "zstd") return std::string("zstd:3");
  if (text.rfind("zstd:", 0) == 0) {
    try {
      size_t pos;
      int level = std::stoi(text.substr(5), &pos);
      if (pos == text.size() - 5 && level >= 1 && level <= 19) {
        return "zstd:" + std::to_string(level);
      }
    } catch (...) {
    }
  }
  return Status::InvalidArgument(
      "compression must be 'none' or 'zstd:N' with N from 1 to 19, not '" + text + "'");
}

Status Repository::Init(const std::string& path, const RepoConfig& in) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return Status::AlreadyExists("'" + path + "' is not a directory");
    if (PathExists(path + kConfigFile)) {
      return Status::AlreadyExists("'" + path + "' is already a pgbackfs repository");
    }
    if (!DirectoryIsEmpty(path)) {
      return Status::AlreadyExists("'" + path + "' exists and is not empty");
    }
  } else if (mkdir(path.c_str(), 0700) != 0) {
    return Status::FromErrno(errno, "create repository directory '" + path + "'");
  }
  chmod(path.c_str(), 0700);
  RepoConfig config = in;
  config.format_version = kFormatVersion;
  config.created = time(nullptr);
  std::random_device rd;
  std::string rid;
  for (int i = 0; i < 16; ++i) rid.push_back(static_cast<char>(rd()));
  config.repository_id = HexEncode(rid);

  KvOptions kv_options;
  kv_options.create_if_missing = true;
  {
    ASSIGN_OR_RETURN(auto kv, OpenRocksDbStore(path + kDbDir, kv_options));
    RETURN_IF_ERROR(kv->Sync());
  }
  // RocksDB makes its directory 0755 and its files 0644; the repository's 0700 is what keeps
  // others out, and db/ is closed too in case the top directory is ever opened up.
  if (chmod((path + kDbDir).c_str(), 0700) != 0) {
    return Status::FromErrno(errno, "chmod '" + path + kDbDir + "'");
  }
  nlohmann::json j = {{"format_version", config.format_version},
                      {"chunk_size", config.chunk_size},
                      {"compression", config.compression},
                      {"repository_id", config.repository_id},
                      {"created", config.created},
                      {"tool", "pgbackfs"}};
  // The config file is written last: a directory without it is not a repository.
  return WriteFileAtomic(path + kConfigFile, j.dump(2) + "\n");
}

Result<RepoConfig> Repository::ReadConfig(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return Status::NotFound("repository '" + path + "' does not exist");
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::FailedPrecondition("'" + path + "' is not a directory");
  }
  // A FIFO or a device under the config file's name would block or never end a read.
  const std::string config_path = path + kConfigFile;
  if (stat(config_path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return Status::FailedPrecondition("'" + path +
                                        "' is not a pgbackfs repository (no pgbackfs.json; "
                                        "create one with 'pgbackfs init')");
    }
    return Status::FromErrno(errno, "stat '" + config_path + "'");
  }
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxConfigBytes) {
    return Status::FailedPrecondition("'" + path + "' is not a pgbackfs repository ('" +
                                      config_path + "' is not a small regular file)");
  }
  std::string text;
  Status s = ReadSmallFile(config_path, &text);
  if (s.IsNotFound()) {
    return Status::FailedPrecondition("'" + path + "' is not a pgbackfs repository");
  }
  RETURN_IF_ERROR(s);
  RepoConfig config;
  try {
    auto j = nlohmann::json::parse(text);
    if (j.value("tool", "") != "pgbackfs") {
      return Status::FailedPrecondition("'" + path + "' is not a pgbackfs repository");
    }
    // get<int>() of a floating-point value out of int's range would be undefined behaviour.
    const nlohmann::json& version = j.at("format_version");
    if (!version.is_number_integer()) {
      return Status::Corruption("bad '" + config_path + "': format_version is not an integer");
    }
    const int64_t format_version = version.get<int64_t>();
    if (format_version < 1) {
      return Status::Corruption("bad '" + config_path + "': unknown format version " +
                                std::to_string(format_version));
    }
    if (format_version > kFormatVersion) {
      return Status::FailedPrecondition("repository '" + path + "' has format version " +
                                        std::to_string(format_version) +
                                        ", newer than this pgbackfs supports (" +
                                        std::to_string(kFormatVersion) + "); upgrade pgbackfs");
    }
    config.format_version = static_cast<int>(format_version);
    const nlohmann::json& chunk_size = j.at("chunk_size");
    if (!chunk_size.is_number_unsigned()) {
      return Status::Corruption("bad '" + config_path + "': chunk_size is not an integer");
    }
    config.chunk_size = chunk_size.get<size_t>();
    config.compression = j.at("compression").get<std::string>();
    config.repository_id = j.value("repository_id", "");
    config.created = JsonIntOr<int64_t>(j, "created", 0);
  } catch (const std::exception& e) {
    return Status::Corruption("bad '" + path + kConfigFile + "': " + e.what());
  }
  if (!ParseChunkSize(std::to_string(config.chunk_size)).ok() ||
      !ParseCompression(config.compression).ok()) {
    return Status::Corruption("bad settings in '" + path + kConfigFile + "'");
  }
  return config;
}

std::string Repository::LockHolder(const std::string& path) {
  std::string text;
  if (!ReadSmallFile(path + kLockFile, &text).ok()) return "";
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

Result<std::unique_ptr<Repository>> Repository::Open(const std::string& path,
                                                     const OpenOptions& options) {
  ASSIGN_OR_RETURN(RepoConfig config, ReadConfig(path));
  auto repo = std::unique_ptr<Repository>(new Repository());
  repo->path_ = path;
  repo->config_ = config;

  std::string lock_path = path + kLockFile;
  repo->lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (repo->lock_fd_ < 0) return Status::FromErrno(errno, "open lock '" + lock_path + "'");
  if (flock(repo->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    // Not ours: the destructor must not truncate the holder's message.
    close(repo->lock_fd_);
    repo->lock_fd_ = -1;
    errno = err;
    if (errno == EWOULDBLOCK) {
      std::string holder = LockHolder(path);
      return Status::Busy("repository '" + path + "' is locked" +
                          (holder.empty() ? "" : " by " + holder));
    }
    return Status::FromErrno(errno, "lock '" + lock_path + "'");
  }
  std::string holder = "pid " + std::to_string(getpid()) + " (" + options.lock_owner + ")\n";
  if (ftruncate(repo->lock_fd_, 0) == 0) {
    RETURN_IF_ERROR(PWriteAll(repo->lock_fd_, holder.data(), holder.size(), 0, lock_path));
  }

  if (options.in_memory) {
    repo->kv_ = NewMemoryStore();
  } else {
    KvOptions kv_options;
    kv_options.block_cache_bytes = options.block_cache_bytes;
    ASSIGN_OR_RETURN(repo->kv_, OpenRocksDbStore(path + kDbDir, kv_options));
  }
  repo->chunks_ = std::make_unique<ChunkStore>(
      repo->kv_.get(), config.zstd_level(), options.chunk_cache_bytes,
      /*train_dictionaries=*/config.format_version >= kFirstFormatWithZstdDictionaries,
      /*located=*/config.format_version >= kFirstFormatWithLocatedChunks);
  repo->reader_ = SnapshotReader(repo->chunks_.get(), config.chunk_size);
  return repo;
}

Repository::~Repository() {
  chunks_.reset();
  kv_.reset();
  if (lock_fd_ >= 0) {
    if (ftruncate(lock_fd_, 0) != 0) {
      // Only a message for other processes; the flock is what counts.
    }
    close(lock_fd_);
  }
}

Result<std::vector<SnapshotInfo>> Repository::ListSnapshots() {
  std::vector<SnapshotInfo> out;
  auto it = kv_->NewIterator(Cf::kMeta);
  for (it->Seek(kSnapshotKeyPrefix); it->Valid(); it->Next()) {
    if (it->key().substr(0, kSnapshotKeyPrefix.size()) != kSnapshotKeyPrefix) break;
    SnapshotInfo info;
    RETURN_IF_ERROR(SnapshotInfo::Decode(it->value(), &info));
    out.push_back(std::move(info));
  }
  RETURN_IF_ERROR(it->status());
  return out;
}

Result<SnapshotInfo> Repository::GetSnapshot(const std::string& id) {
  if (id == "latest") {
    ASSIGN_OR_RETURN(auto all, ListSnapshots());
    if (all.empty()) return Status::NotFound("repository has no snapshots");
    return all.back();
  }
  if (id.empty() || id.find('/') != std::string::npos) {
    return Status::InvalidArgument("bad snapshot id '" + id + "'");
  }
  std::string value;
  Status s = kv_->Get(Cf::kMeta, std::string(kSnapshotKeyPrefix) + id, &value);
  if (s.IsNotFound()) return Status::NotFound("unknown snapshot '" + id + "'");
  RETURN_IF_ERROR(s);
  SnapshotInfo info;
  RETURN_IF_ERROR(SnapshotInfo::Decode(value, &info));
  return info;
}

Result<std::string> Repository::NewSnapshotId(int64_t unix_time) {
  std::lock_guard<std::mutex> lock(mu_);
  time_t t = static_cast<time_t>(unix_time);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  for (int n = 1; n < 1000; ++n) {
    std::string id = n == 1 ? buf : std::string(buf) + "-" + std::to_string(n);
    std::string value;
    Status s = kv_->Get(Cf::kMeta, std::string(kSnapshotKeyPrefix) + id, &value);
    if (s.IsNotFound()) return id;
    RETURN_IF_ERROR(s);
  }
  return Status::Busy("no free snapshot id for this second");
}

Status Repository::CommitSnapshot(const SnapshotInfo& info) {
  KvBatch batch;
  batch.Put(Cf::kMeta, std::string(kSnapshotKeyPrefix) + info.id, info.Encode());
  return kv_->Write(batch, /*sync=*/true);
}

Result<std::string> Repository::SystemIdentifier() {
  std::string value;
  Status s = kv_->Get(Cf::kMeta, kSystemIdKey, &value);
  if (s.IsNotFound()) return std::string();
  RETURN_IF_ERROR(s);
  return value;
}

Status Repository::CheckSystemIdentifier(const std::string& sysid) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(std::string stored, SystemIdentifier());
  if (stored.empty()) {
    KvBatch batch;
    batch.Put(Cf::kMeta, kSystemIdKey, sysid);
    return kv_->Write(batch, true);
  }
  if (stored != sysid) {
    return Status::FailedPrecondition("this repository holds PostgreSQL cluster " + stored +
                                      ", not cluster " + sysid);
  }
  return Status::OK();
}

}  // namespace pgbackfs
