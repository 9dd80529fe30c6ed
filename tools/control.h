// The mount daemon's control socket, REPO/control.sock (mode 0600, created once the repository is
// locked, removed at shutdown). A CLI command that finds the repository locked by a mount daemon
// runs inside that daemon instead: it sends its argv, its working directory and its stdin, stdout
// and stderr file descriptors, and exits with the code the daemon sends back.
//
// Protocol, version 1: one request per connection, little-endian integers.
//   request: "PGBFCTL1", u32 payload length (<= kMaxControlPayload), payload; the first bytes
//            carry SCM_RIGHTS with exactly 3 descriptors (stdin, stdout, stderr).
//            payload: u32 argc (1..kMaxControlArgs), argc x (u32 length, bytes), u32 length, cwd
//   reply:   "PGBFRES1", i32 exit code (0..255)
// Everything a client sends is outside input: sizes are capped, strings checked, descriptors
// closed on every error path, and the peer must run as the daemon's user (or root).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "repo/status.h"
#include "tools/cli.h"

namespace pgbackfs {

constexpr size_t kMaxControlPayload = 1 << 20;
constexpr size_t kMaxControlArgs = 4096;

struct ControlRequest {
  std::vector<std::string> args;  // args[0] is the program name
  std::string cwd;                // absolute

  std::string Encode() const;  // header and payload
  // Decodes a payload (after the header). InvalidArgument on anything malformed.
  static Status DecodePayload(std::string_view payload, ControlRequest* out);
};

// Parses the 12-byte request header; InvalidArgument if it is not one or announces too much.
Status DecodeControlHeader(std::string_view header, uint32_t* payload_size);
constexpr size_t kControlHeaderSize = 12;

std::string EncodeControlReply(int exit_code);
Status DecodeControlReply(std::string_view reply, int* exit_code);
constexpr size_t kControlReplySize = 12;

std::string ControlSocketPath(const std::string& repo_path);

// True if a daemon listens on `socket_path`. A socket file left by a killed daemon refuses the
// connection: false (the repository lock, not the socket file, says who owns the repository).
bool ControlSocketAccepts(const std::string& socket_path);

// The client side: runs `args` in the daemon listening on `socket_path`, with this process's
// stdin, stdout and stderr, and returns the command's exit code (1 after printing an error to
// stderr if the daemon cannot be reached or goes away).
int ForwardCommand(const std::string& socket_path, const std::vector<std::string>& args,
                   const std::string& cwd);

// The daemon side. Each connection gets a thread that runs one command with `run`; the command's
// CommandIo writes to the client's descriptors, and its `cancelled` flag is set when the client
// goes away (the connection closes, or a write to its stdout or stderr fails with EPIPE).
class ControlServer {
 public:
  using Runner = std::function<int(const std::vector<std::string>& args, CommandIo* io)>;

  // Binds `socket_path` (replacing a stale socket file) and starts accepting.
  static Result<std::unique_ptr<ControlServer>> Start(const std::string& socket_path, Runner run);
  ~ControlServer();  // Stop()
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Stops accepting, removes the socket file, and waits for running commands to finish.
  void Stop();

 private:
  struct Connection;
  ControlServer() = default;
  void AcceptLoop();
  void Serve(int conn_fd);

  std::string path_;
  Runner run_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: ends AcceptLoop
  std::thread acceptor_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Worker> workers_;  // guarded by mu_; finished ones are joined on the next accept
  int active_ = 0;             // guarded by mu_
  bool stopped_ = false;       // guarded by mu_
};

}  // namespace pgbackfs
