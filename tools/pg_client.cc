#include "tools/pg_client.h"

#include <libpq-fe.h>
#include <poll.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

namespace pgbackfs {

namespace {

constexpr int kMinServerVersion = 150000;

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultDeleter>;

// libpq messages end with "\n" and may hold several lines; one line reads better after our
// prefix.
std::string OneLine(const char* text) {
  std::string out;
  bool space = false;
  for (const char* p = text ? text : ""; *p; ++p) {
    if (*p == '\n' || *p == '\t' || *p == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(*p);
  }
  return out;
}

struct PqFree {
  void operator()(char* p) const { PQfreemem(p); }
};

// Reads a COPY OUT stream on a thread of its own, so that the server keeps sending (and the
// kernel keeps receiving) while the caller works on what came before. Messages wait in a queue
// bounded in bytes, in libpq's own buffers: nothing is copied. The connection belongs to the
// thread from construction until the destructor has joined it.
class CopyStreamReader {
 public:
  struct Message {
    std::unique_ptr<char, PqFree> data;
    size_t size = 0;
  };

  CopyStreamReader(PGconn* conn, size_t max_queued_bytes)
      : conn_(conn), max_bytes_(max_queued_bytes), thread_([this] { Run(); }) {}
  ~CopyStreamReader() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    not_full_.notify_all();
    thread_.join();
  }

  // Waits for the next message. False at the end of the stream; on a broken stream, false with
  // `*error` set to libpq's message.
  bool Next(Message* msg, std::string* error) {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return !queue_.empty() || finished_; });
    if (queue_.empty()) {
      *error = error_;
      return false;
    }
    *msg = std::move(queue_.front());
    queue_.pop_front();
    bool was_full = queued_bytes_ >= max_bytes_;
    queued_bytes_ -= msg->size;
    lock.unlock();
    if (was_full) not_full_.notify_one();
    return true;
  }

 private:
  void Run() {
    for (;;) {
      char* buf = nullptr;
      int n = PQgetCopyData(conn_, &buf, /*async=*/1);
      if (n > 0) {
        Message msg{std::unique_ptr<char, PqFree>(buf), static_cast<size_t>(n)};
        std::unique_lock<std::mutex> lock(mu_);
        not_full_.wait(lock, [&] { return queued_bytes_ < max_bytes_ || stop_; });
        if (stop_) return;
        bool was_empty = queue_.empty();
        queued_bytes_ += msg.size;
        queue_.push_back(std::move(msg));
        lock.unlock();
        if (was_empty) not_empty_.notify_one();
        continue;
      }
      if (n == 0) {  // no complete message buffered: wait for the socket, a stop at most 100 ms
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (stop_) return;
        }
        pollfd p{PQsocket(conn_), POLLIN, 0};
        poll(&p, 1, 100);
        if (PQconsumeInput(conn_)) continue;
      }
      // -1: the stream ended; -2 or a failed read: it broke.
      std::lock_guard<std::mutex> lock(mu_);
      if (n != -1) {
        error_ = OneLine(PQerrorMessage(conn_));
        if (error_.empty()) error_ = "connection lost";
      }
      finished_ = true;
      not_empty_.notify_one();
      return;
    }
  }

  PGconn* conn_;
  const size_t max_bytes_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<Message> queue_;  // GUARDED_BY(mu_), and so are the four below
  size_t queued_bytes_ = 0;
  bool finished_ = false;
  bool stop_ = false;
  std::string error_;
  std::thread thread_;  // last: starts once everything above is constructed
};

bool Contains(const std::string& haystack, const char* needle) {
  return haystack.find(needle) != std::string::npos;
}

// Passwords written in a connection string that libpq could not parse, found by hand: the value
// after "password=" (quoted or not), and the "user:password@" part of a URI.
void FindPasswordsByHand(const std::string& s, std::vector<std::string>* out) {
  for (size_t pos = 0; (pos = s.find("password", pos)) != std::string::npos;) {
    pos += 8;
    size_t p = pos;
    while (p < s.size() && s[p] == ' ') ++p;
    if (p >= s.size() || s[p] != '=') continue;
    ++p;
    while (p < s.size() && s[p] == ' ') ++p;
    std::string value;
    if (p < s.size() && s[p] == '\'') {
      for (++p; p < s.size() && s[p] != '\''; ++p) {
        if (s[p] == '\\' && p + 1 < s.size()) ++p;
        value.push_back(s[p]);
      }
    } else {
      while (p < s.size() && s[p] != ' ' && s[p] != '&') value.push_back(s[p++]);
    }
    if (!value.empty()) out->push_back(value);
  }
  size_t scheme = s.find("://");
  if (scheme != std::string::npos) {
    size_t at = s.find('@', scheme + 3);
    size_t colon = s.find(':', scheme + 3);
    if (at != std::string::npos && colon != std::string::npos && colon < at) {
      out->push_back(s.substr(colon + 1, at - colon - 1));
    }
  }
}

}  // namespace

std::string RedactPasswords(const std::string& message, const std::string& conninfo) {
  std::vector<std::string> secrets;
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts) {
    for (PQconninfoOption* o = opts; o->keyword; ++o) {
      if (std::strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
        secrets.push_back(o->val);
      }
    }
    PQconninfoFree(opts);
  }
  if (err) PQfreemem(err);
  FindPasswordsByHand(conninfo, &secrets);
  std::string out = message;
  for (const std::string& secret : secrets) {
    if (secret.empty()) continue;
    for (size_t pos = 0; (pos = out.find(secret, pos)) != std::string::npos;) {
      out.replace(pos, secret.size(), "********");
      pos += 8;
    }
  }
  return out;
}

Result<std::string> QuoteReplicationLiteral(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\0') return Status::InvalidArgument("string contains a NUL byte");
    if (c == '\'') out.push_back('\'');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

Result<std::unique_ptr<PgReplicationConnection>> PgReplicationConnection::Connect(
    const std::string& conninfo) {
  // Parse first: libpq's own message then says what is wrong with the string itself.
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &parse_error);
  if (!parsed) {
    std::string msg = parse_error ? OneLine(parse_error) : "out of memory";
    if (parse_error) PQfreemem(parse_error);
    return Status::InvalidArgument("invalid connection string: " + RedactPasswords(msg, conninfo));
  }
  PQconninfoFree(parsed);

  // "dbname" comes first and is expanded (expand_dbname = 1), so the keywords after it override
  // what the user's string says: this is always a physical replication connection.
  const char* keywords[] = {"dbname", "replication", "fallback_application_name", nullptr};
  const char* values[] = {conninfo.c_str(), "true", "pgbackfs", nullptr};
  PGconn* conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (!conn) return Status::IOError("could not connect: out of memory");
  auto client =
      std::unique_ptr<PgReplicationConnection>(new PgReplicationConnection(conn, conninfo));
  PQsetNoticeProcessor(conn, &PgReplicationConnection::NoticeThunk, client.get());

  if (PQstatus(conn) != CONNECTION_OK) {
    std::string err = client->LastError();
    std::string where = client->Describe();
    const char* user = PQuser(conn);
    std::string role = user && *user ? user : "?";
    if (Contains(err, "replication role") || Contains(err, "permission denied to start WAL")) {
      return Status::PermissionDenied(
          "role \"" + role + "\" may not make replication connections (" + err +
          "); give it the REPLICATION attribute (as a superuser: ALTER ROLE \"" + role +
          "\" REPLICATION;) or connect as a role that has it");
    }
    if (Contains(err, "no pg_hba.conf entry for replication connection")) {
      return Status::PermissionDenied(
          "the server refuses replication connections from here (" + err +
          "); add a line such as 'host replication " + role +
          " <client address>/32 scram-sha-256' to pg_hba.conf and reload the server");
    }
    return Status::IOError("could not connect to PostgreSQL (" + where + "): " + err);
  }
  int version = PQserverVersion(conn);
  if (version < kMinServerVersion) {
    return Status::NotSupported("the server at " + client->Describe() + " runs PostgreSQL " +
                                client->server_version() +
                                "; pgbackfs backup needs PostgreSQL 15 or later (it speaks "
                                "only the PG15 BASE_BACKUP protocol)");
  }
  return client;
}

PgReplicationConnection::~PgReplicationConnection() {
  if (conn_) PQfinish(conn_);
}

void PgReplicationConnection::NoticeThunk(void* arg, const char* message) {
  auto* self = static_cast<PgReplicationConnection*>(arg);
  if (!self->notice_handler_) return;
  std::string_view text(message);
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  self->notice_handler_(text);
}

void PgReplicationConnection::SetNoticeHandler(std::function<void(std::string_view)> handler) {
  notice_handler_ = std::move(handler);
}

int PgReplicationConnection::server_version_num() const { return PQserverVersion(conn_); }

std::string PgReplicationConnection::server_version() const {
  const char* v = PQparameterStatus(conn_, "server_version");
  std::string s = v ? v : "";
  size_t space = s.find(' ');
  if (space != std::string::npos) s.resize(space);
  return s;
}

std::string PgReplicationConnection::Describe() const {
  std::string out;
  auto add = [&](const char* key, const char* value) {
    if (!value || !*value) return;
    if (!out.empty()) out.push_back(' ');
    out += key;
    out.push_back('=');
    out += value;
  };
  add("host", PQhost(conn_));
  add("port", PQport(conn_));
  add("user", PQuser(conn_));
  return RedactPasswords(out, conninfo_);
}

std::string PgReplicationConnection::LastError() const {
  std::string msg = OneLine(PQerrorMessage(conn_));
  if (msg.empty()) msg = "unknown error";
  return RedactPasswords(msg, conninfo_);
}

Result<SystemIdentity> PgReplicationConnection::IdentifySystem() {
  PgResult res(PQexec(conn_, "IDENTIFY_SYSTEM"));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return Status::IOError("IDENTIFY_SYSTEM failed: " + LastError());
  }
  if (PQntuples(res.get()) != 1 || PQnfields(res.get()) < 3) {
    return Status::IOError(
        "unexpected answer to IDENTIFY_SYSTEM: " + std::to_string(PQntuples(res.get())) +
        " rows, " + std::to_string(PQnfields(res.get())) + " fields");
  }
  SystemIdentity id;
  id.system_identifier = PQgetvalue(res.get(), 0, 0);
  id.timeline = static_cast<uint32_t>(std::strtoul(PQgetvalue(res.get(), 0, 1), nullptr, 10));
  id.xlogpos = PQgetvalue(res.get(), 0, 2);
  if (id.system_identifier.empty() || id.timeline == 0) {
    return Status::IOError("unexpected answer to IDENTIFY_SYSTEM");
  }
  return id;
}

Result<std::string> PgReplicationConnection::Show(const std::string& setting) {
  for (char c : setting) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') {
      return Status::InvalidArgument("bad setting name '" + setting + "'");
    }
  }
  PgResult res(PQexec(conn_, ("SHOW " + setting).c_str()));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) != 1) {
    return Status::IOError("SHOW " + setting + " failed: " + LastError());
  }
  return std::string(PQgetvalue(res.get(), 0, 0));
}

Status BaseBackupStreamDecoder::OnMessage(std::string_view message) {
  if (message.empty()) return Status::IOError("base backup stream: empty message");
  std::string_view msg = message.substr(1);
  switch (message[0]) {
    case 'n': {  // new archive: name\0 location\0
      size_t a = msg.find('\0');
      size_t b = a == std::string_view::npos ? a : msg.find('\0', a + 1);
      if (b == std::string_view::npos) {
        return Status::IOError("base backup stream: bad new-archive message");
      }
      if (in_manifest_) return Status::IOError("base backup stream: archive after the manifest");
      in_archive_ = true;
      return handler_->OnArchive(std::string(msg.substr(0, a)),
                                 std::string(msg.substr(a + 1, b - a - 1)));
    }
    case 'd':
      if (in_manifest_) return handler_->OnManifestData(msg);
      if (in_archive_) return handler_->OnArchiveData(msg);
      return Status::IOError("base backup stream: data before any archive");
    case 'p': {
      if (msg.size() != 8) return Status::IOError("base backup stream: bad progress message");
      uint64_t v = 0;
      for (unsigned char c : msg) v = (v << 8) | c;
      handler_->OnServerProgress(v);
      return Status::OK();
    }
    case 'm':
      if (in_manifest_) return Status::IOError("base backup stream: second manifest");
      in_manifest_ = true;
      return handler_->OnManifest();
    default:
      return Status::IOError("base backup stream: unknown message type '" +
                             std::string(1, message[0]) + "'");
  }
}

Result<BaseBackupResult> PgReplicationConnection::BaseBackup(const BaseBackupOptions& options,
                                                             BaseBackupHandler* handler) {
  ASSIGN_OR_RETURN(std::string label, QuoteReplicationLiteral(options.label));
  // WAIT false: the WAL needed to make the backup consistent comes inside it, so there is no
  // reason to wait for the archiver; and with archive_command = 'pgbackfs archive-push' into
  // this same (now locked) repository, waiting would never end.
  std::string cmd = "BASE_BACKUP (LABEL " + label;
  if (options.progress) cmd += ", PROGRESS";
  cmd += options.fast_checkpoint ? ", CHECKPOINT 'fast'" : ", CHECKPOINT 'spread'";
  cmd += ", WAL, WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TARGET 'client'";
  if (options.max_rate_kb) cmd += ", MAX_RATE " + std::to_string(options.max_rate_kb);
  cmd += ")";
  if (!PQsendQuery(conn_, cmd.c_str())) {
    return Status::IOError("could not send BASE_BACKUP: " + LastError());
  }

  // 1. The start position (after the checkpoint, which may take a while).
  PgResult res(PQgetResult(conn_));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    return Status::IOError("could not start the base backup: " + LastError());
  }
  if (PQntuples(res.get()) != 1 || PQnfields(res.get()) < 2) {
    return Status::IOError("unexpected start of BASE_BACKUP answer");
  }
  std::string start_lsn = PQgetvalue(res.get(), 0, 0);
  uint32_t start_tli =
      static_cast<uint32_t>(std::strtoul(PQgetvalue(res.get(), 0, 1), nullptr, 10));

  // 2. The tablespaces: spcoid, spclocation, size (kB); the main directory has NULLs.
  res.reset(PQgetResult(conn_));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQnfields(res.get()) < 3) {
    return Status::IOError("could not read the base backup's tablespace list: " + LastError());
  }
  std::vector<TablespaceInfo> tablespaces;
  for (int i = 0; i < PQntuples(res.get()); ++i) {
    TablespaceInfo t;
    if (!PQgetisnull(res.get(), i, 0)) t.oid = PQgetvalue(res.get(), i, 0);
    if (!PQgetisnull(res.get(), i, 1)) t.location = PQgetvalue(res.get(), i, 1);
    if (!PQgetisnull(res.get(), i, 2))
      t.size_kb = std::strtoll(PQgetvalue(res.get(), i, 2), nullptr, 10);
    tablespaces.push_back(std::move(t));
  }
  RETURN_IF_ERROR(handler->OnStart(start_lsn, start_tli, tablespaces));

  // 3. One COPY OUT stream; each CopyData starts with a type byte.
  res.reset(PQgetResult(conn_));
  if (PQresultStatus(res.get()) != PGRES_COPY_OUT) {
    return Status::IOError("base backup did not start its data stream: " + LastError());
  }
  res.reset();
  BaseBackupStreamDecoder decoder(handler);
  // 16 MiB in flight at most: memory stays bounded whatever the database size.
  auto reader = std::make_unique<CopyStreamReader>(conn_, 16 << 20);
  CopyStreamReader::Message message;
  std::string stream_error;
  while (reader->Next(&message, &stream_error)) {
    RETURN_IF_ERROR(decoder.OnMessage(std::string_view(message.data.get(), message.size)));
  }
  reader.reset();  // joined: the connection is ours again
  if (!stream_error.empty()) {
    return Status::IOError("base backup stream broke: " + RedactPasswords(stream_error, conninfo_));
  }

  // 4. The end position, then the command's completion. A failure found by the server at the
  // end (data checksum errors, say) shows up here.
  res.reset(PQgetResult(conn_));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    const char* state = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
    if (state && std::strcmp(state, "XX001") == 0) {
      return Status::Corruption("the server found data checksum failures during the backup: " +
                                LastError());
    }
    return Status::IOError("base backup failed: " + LastError());
  }
  if (PQntuples(res.get()) != 1 || PQnfields(res.get()) < 2) {
    return Status::IOError("base backup: no end position from the server");
  }
  BaseBackupResult result;
  result.end_lsn = PQgetvalue(res.get(), 0, 0);
  result.timeline = static_cast<uint32_t>(std::strtoul(PQgetvalue(res.get(), 0, 1), nullptr, 10));
  for (;;) {
    res.reset(PQgetResult(conn_));
    if (!res) break;
    ExecStatusType st = PQresultStatus(res.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      const char* state = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
      if (state && std::strcmp(state, "XX001") == 0) {
        return Status::Corruption("the server found data checksum failures during the backup: " +
                                  LastError());
      }
      return Status::IOError("base backup failed at the end: " + LastError());
    }
  }
  return result;
}

}  // namespace pgbackfs
