// A client for PostgreSQL's physical replication protocol: just what `pgbackfs backup` needs
// (IDENTIFY_SYSTEM and the PG15 form of BASE_BACKUP, which sends every archive and the backup
// manifest in one COPY OUT stream). An RAII wrapper around libpq's PGconn; libpq itself stays
// out of this header.
//
// Protocol reference: PostgreSQL docs, "Streaming Replication Protocol", and the server side in
// src/backend/replication/basebackup_copy.c (PG15).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "repo/status.h"

typedef struct pg_conn PGconn;  // libpq-fe.h

namespace pgbackfs {

// What IDENTIFY_SYSTEM answers.
struct SystemIdentity {
  std::string system_identifier;  // decimal, as the server prints it
  uint32_t timeline = 0;
  std::string xlogpos;  // "X/X"
};

// One row of the tablespace result set BASE_BACKUP sends before its data.
struct TablespaceInfo {
  std::string oid;       // "" for the main data directory
  std::string location;  // "" for the main data directory
  int64_t size_kb = -1;  // the server's estimate (PROGRESS), -1 if unknown
  bool is_main() const { return oid.empty(); }
};

struct BaseBackupOptions {
  std::string label;
  bool fast_checkpoint = false;
  bool progress = true;      // ask for size estimates (costs the server one extra directory scan)
  uint32_t max_rate_kb = 0;  // MAX_RATE in kB/s; 0 = unlimited
};

// Receives what BASE_BACKUP streams, in order: OnStart, then for each archive OnArchive followed
// by its data, then OnManifest followed by the manifest's data. A callback that fails stops the
// backup; the server aborts its side when the connection closes.
class BaseBackupHandler {
 public:
  virtual ~BaseBackupHandler() = default;
  virtual Status OnStart(const std::string& start_lsn, uint32_t timeline,
                         const std::vector<TablespaceInfo>& tablespaces) = 0;
  virtual Status OnArchive(const std::string& name, const std::string& location) = 0;
  // `data` is valid only during the call.
  virtual Status OnArchiveData(std::string_view data) = 0;
  virtual Status OnManifest() = 0;
  virtual Status OnManifestData(std::string_view data) = 0;
  // The server's count of bytes sent so far (about once a second).
  virtual void OnServerProgress(uint64_t bytes_done) {}
};

// Splits the CopyData messages of a BASE_BACKUP stream ('n' new archive, 'd' data, 'p' progress,
// 'm' manifest; src/backend/replication/basebackup_copy.c) into `handler` calls. Everything in
// the stream is outside input: a message out of order or malformed is an IOError.
class BaseBackupStreamDecoder {
 public:
  explicit BaseBackupStreamDecoder(BaseBackupHandler* handler) : handler_(handler) {}
  // One CopyData message, its type byte first. An error from the handler is returned as it is.
  Status OnMessage(std::string_view message);

 private:
  BaseBackupHandler* handler_;
  bool in_archive_ = false;
  bool in_manifest_ = false;
};

struct BaseBackupResult {
  std::string end_lsn;  // "X/X"
  uint32_t timeline = 0;
};

// One replication connection. Not thread-safe: one user at a time.
class PgReplicationConnection {
 public:
  // Connects with `conninfo` (a key=value string or a postgresql:// URI) plus replication=true.
  // Errors name the server (never a password) and say how to fix the usual causes: a role
  // without the REPLICATION attribute, a missing pg_hba.conf replication line, a server older
  // than PostgreSQL 15.
  static Result<std::unique_ptr<PgReplicationConnection>> Connect(const std::string& conninfo);

  ~PgReplicationConnection();
  PgReplicationConnection(const PgReplicationConnection&) = delete;
  PgReplicationConnection& operator=(const PgReplicationConnection&) = delete;

  // Server notices (NOTICE, WARNING) go here, one message per call, without the trailing newline.
  // By default they are dropped.
  void SetNoticeHandler(std::function<void(std::string_view)> handler);

  int server_version_num() const;  // 150004
  // server_version without the distribution suffix: "15.4".
  std::string server_version() const;
  // "host=H port=P user=U": where this connection goes, safe to print.
  std::string Describe() const;

  Result<SystemIdentity> IdentifySystem();
  // SHOW `setting` (allowed on replication connections), as the server prints it ("16MB").
  Result<std::string> Show(const std::string& setting);
  // Runs BASE_BACKUP (PG15 syntax, TARGET 'client', WAL included, manifest with CRC32C checksums)
  // and streams everything into `handler`. The connection cannot be used again after an error.
  Result<BaseBackupResult> BaseBackup(const BaseBackupOptions& options, BaseBackupHandler* handler);

 private:
  explicit PgReplicationConnection(PGconn* conn, std::string conninfo)
      : conn_(conn), conninfo_(std::move(conninfo)) {}
  static void NoticeThunk(void* arg, const char* message);
  // libpq's last error, one line, with any password from the connection string masked.
  std::string LastError() const;

  PGconn* conn_;
  std::string conninfo_;
  std::function<void(std::string_view)> notice_handler_;
};

// A replication-protocol string literal: 'it''s'. InvalidArgument for strings with NUL bytes.
Result<std::string> QuoteReplicationLiteral(std::string_view text);

// Replaces every password found in `conninfo` (key=value or URI form) by "********" in `message`.
std::string RedactPasswords(const std::string& message, const std::string& conninfo);

}  // namespace pgbackfs
