#include "tools/control.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "repo/coding.h"

namespace pgbackfs {

namespace {

constexpr char kRequestMagic[8] = {'P', 'G', 'B', 'F', 'C', 'T', 'L', '1'};
constexpr char kReplyMagic[8] = {'P', 'G', 'B', 'F', 'R', 'E', 'S', '1'};
constexpr int kRequestTimeoutSec = 10;  // to send a request once connected
constexpr int kMaxConcurrentCommands = 16;

// --- socket addresses --------------------------------------------------------------------------

// A socket address for `path`. A path too long for sun_path is reached through its directory's
// descriptor in /proc/self/fd; `*dir_fd` is then set, and must be closed after bind or connect.
Status MakeAddress(const std::string& path, sockaddr_un* addr, int* dir_fd) {
  *addr = {};
  addr->sun_family = AF_UNIX;
  *dir_fd = -1;
  std::string target = path;
  if (target.size() >= sizeof(addr->sun_path)) {
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    *dir_fd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*dir_fd < 0) return Status::FromErrno(errno, "open '" + dir + "'");
    target = "/proc/self/fd/" + std::to_string(*dir_fd) + "/" + path.substr(slash + 1);
    if (target.size() >= sizeof(addr->sun_path)) {
      close(*dir_fd);
      *dir_fd = -1;
      return Status::InvalidArgument("socket name too long: '" + path + "'");
    }
  }
  memcpy(addr->sun_path, target.c_str(), target.size() + 1);
  return Status::OK();
}

// A connected socket, or -1 with errno set.
int Connect(const std::string& path) {
  sockaddr_un addr;
  int dir_fd;
  if (!MakeAddress(path, &addr, &dir_fd).ok()) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -1 : connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  if (dir_fd >= 0) close(dir_fd);
  if (rc != 0) {
    if (fd >= 0) close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// --- I/O helpers -------------------------------------------------------------------------------

bool SendAll(int fd, const char* data, size_t len) {
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Reads exactly `len` bytes. 0 on success, else an errno (0 bytes before EOF: ECONNRESET).
int RecvAll(int fd, char* data, size_t len) {
  while (len > 0) {
    ssize_t n = recv(fd, data, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? ETIMEDOUT : errno;
    }
    if (n == 0) return ECONNRESET;
    data += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

void CloseAll(std::vector<int>* fds) {
  for (int fd : *fds) close(fd);
  fds->clear();
}

// Receives the request header and the descriptors sent with it. 0 on success, else an errno;
// on failure no received descriptor stays open.
int RecvHeader(int conn, char* header, std::vector<int>* fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 3)];
  iovec iov{header, kControlHeaderSize};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EAGAIN ? ETIMEDOUT : errno;
  if (n == 0) return ECONNRESET;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->push_back(fd);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    CloseAll(fds);  // more descriptors than a request carries
    return EPROTO;
  }
  int err = RecvAll(conn, header + n, kControlHeaderSize - static_cast<size_t>(n));
  if (err) CloseAll(fds);
  return err;
}

// --- streams on a client's descriptors --------------------------------------------------------

struct StreamCookie {
  int fd;
  std::shared_ptr<std::atomic<bool>> cancelled;
};

ssize_t CookieWrite(void* cookie, const char* buf, size_t size) {
  auto* c = static_cast<StreamCookie*>(cookie);
  size_t done = 0;
  while (done < size) {
    ssize_t n = write(c->fd, buf + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) c->cancelled->store(true);  // nobody reads: end the command
      return done > 0 ? static_cast<ssize_t>(done) : -1;
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(size);
}

int CookieClose(void* cookie) {
  auto* c = static_cast<StreamCookie*>(cookie);
  close(c->fd);
  delete c;
  return 0;
}

// A FILE* that owns `fd`. On failure `fd` is closed and stdio's /dev/null stand-in returned.
FILE* OpenStream(int fd, std::shared_ptr<std::atomic<bool>> cancelled, bool unbuffered) {
  cookie_io_functions_t fns{};
  fns.write = CookieWrite;
  fns.close = CookieClose;
  auto* cookie = new StreamCookie{fd, std::move(cancelled)};
  FILE* f = fopencookie(cookie, "w", fns);
  if (!f) {
    close(fd);
    delete cookie;
    return fopen("/dev/null", "w");
  }
  if (unbuffered) {
    setvbuf(f, nullptr, _IONBF, 0);
  } else if (isatty(fd)) {
    setvbuf(f, nullptr, _IOLBF, BUFSIZ);
  }
  return f;
}

}  // namespace

// --- encoding ----------------------------------------------------------------------------------

std::string ControlRequest::Encode() const {
  std::string payload;
  PutFixed32(&payload, static_cast<uint32_t>(args.size()));
  for (const std::string& a : args) {
    PutFixed32(&payload, static_cast<uint32_t>(a.size()));
    payload += a;
  }
  PutFixed32(&payload, static_cast<uint32_t>(cwd.size()));
  payload += cwd;
  std::string out(kRequestMagic, sizeof(kRequestMagic));
  PutFixed32(&out, static_cast<uint32_t>(payload.size()));
  return out + payload;
}

Status DecodeControlHeader(std::string_view header, uint32_t* payload_size) {
  if (header.size() != kControlHeaderSize ||
      header.substr(0, sizeof(kRequestMagic)) != std::string_view(kRequestMagic, 8)) {
    return Status::InvalidArgument("not a pgbackfs control request");
  }
  Decoder in(header.substr(8));
  in.GetFixed32(payload_size);
  if (*payload_size > kMaxControlPayload) {
    return Status::InvalidArgument("control request of " + std::to_string(*payload_size) +
                                   " bytes is too large");
  }
  return Status::OK();
}

Status ControlRequest::DecodePayload(std::string_view payload, ControlRequest* out) {
  auto bad = [](const std::string& what) {
    return Status::InvalidArgument("bad control request: " + what);
  };
  if (payload.size() > kMaxControlPayload) return bad("too large");
  Decoder in(payload);
  uint32_t argc;
  if (!in.GetFixed32(&argc)) return bad("truncated");
  if (argc == 0 || argc > kMaxControlArgs) return bad(std::to_string(argc) + " arguments");
  out->args.clear();
  for (uint32_t i = 0; i < argc; ++i) {
    uint32_t len;
    std::string_view arg;
    if (!in.GetFixed32(&len) || !in.GetBytes(len, &arg)) return bad("truncated");
    if (arg.find('\0') != std::string_view::npos) return bad("NUL in an argument");
    out->args.emplace_back(arg);
  }
  uint32_t len;
  std::string_view cwd;
  if (!in.GetFixed32(&len) || !in.GetBytes(len, &cwd)) return bad("truncated");
  if (cwd.empty() || cwd[0] != '/' || cwd.size() >= PATH_MAX ||
      cwd.find('\0') != std::string_view::npos) {
    return bad("working directory is not an absolute path");
  }
  out->cwd.assign(cwd);
  if (!in.empty()) return bad("trailing bytes");
  return Status::OK();
}

std::string EncodeControlReply(int exit_code) {
  std::string out(kReplyMagic, sizeof(kReplyMagic));
  PutFixed32(&out, static_cast<uint32_t>(exit_code));
  return out;
}

Status DecodeControlReply(std::string_view reply, int* exit_code) {
  if (reply.size() != kControlReplySize ||
      reply.substr(0, sizeof(kReplyMagic)) != std::string_view(kReplyMagic, 8)) {
    return Status::InvalidArgument("not a pgbackfs control reply");
  }
  uint32_t code;
  Decoder in(reply.substr(8));
  in.GetFixed32(&code);
  if (code > 255) return Status::InvalidArgument("bad exit code in control reply");
  *exit_code = static_cast<int>(code);
  return Status::OK();
}

std::string ControlSocketPath(const std::string& repo_path) { return repo_path + "/control.sock"; }

bool ControlSocketAccepts(const std::string& socket_path) {
  int fd = Connect(socket_path);
  if (fd < 0) return false;
  close(fd);  // the daemon drops a connection that sends nothing
  return true;
}

// --- client ------------------------------------------------------------------------------------

int ForwardCommand(const std::string& socket_path, const std::vector<std::string>& args,
                   const std::string& cwd) {
  int fd = Connect(socket_path);
  if (fd < 0) {
    fprintf(stderr, "pgbackfs: error: cannot reach the mount daemon at '%s': %s\n",
            socket_path.c_str(), strerror(errno));
    return 1;
  }
  ControlRequest req{args, cwd.empty() ? "/" : cwd};
  std::string msg = req.Encode();
  if (msg.size() > kControlHeaderSize + kMaxControlPayload || args.size() > kMaxControlArgs) {
    fprintf(stderr, "pgbackfs: error: command line too long to hand to the mount daemon\n");
    close(fd);
    return 2;
  }
  // Our stdin, stdout and stderr; /dev/null for any that is closed.
  int fds[3];
  std::vector<int> opened;
  for (int i = 0; i < 3; ++i) {
    fds[i] = i;
    if (fcntl(i, F_GETFD) == -1) {
      fds[i] = open("/dev/null", O_RDWR | O_CLOEXEC);
      opened.push_back(fds[i]);
    }
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(fds))] = {};
  iovec iov{msg.data(), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(fds));
  memcpy(CMSG_DATA(c), fds, sizeof(fds));
  ssize_t n;
  do {
    n = sendmsg(fd, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  bool sent = n > 0 && SendAll(fd, msg.data() + n, msg.size() - static_cast<size_t>(n));
  CloseAll(&opened);
  if (!sent) {
    fprintf(stderr, "pgbackfs: error: cannot send the command to the mount daemon: %s\n",
            strerror(errno));
    close(fd);
    return 1;
  }
  char reply[kControlReplySize];
  int err = RecvAll(fd, reply, sizeof(reply));
  close(fd);
  int code = 1;
  if (err || !DecodeControlReply(std::string_view(reply, sizeof(reply)), &code).ok()) {
    fprintf(stderr,
            "pgbackfs: error: the mount daemon ended the command without an exit code (see "
            "REPO/log/mount.log)\n");
    return 1;
  }
  return code;
}

// --- server ------------------------------------------------------------------------------------

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& socket_path,
                                                            Runner run) {
  std::unique_ptr<ControlServer> server(new ControlServer());
  server->path_ = socket_path;
  server->run_ = std::move(run);
  sockaddr_un addr;
  int dir_fd;
  RETURN_IF_ERROR(MakeAddress(socket_path, &addr, &dir_fd));
  // We hold the repository lock, so a socket file here was left by a daemon that died.
  if (unlink(socket_path.c_str()) != 0 && errno != ENOENT) {
    int err = errno;
    if (dir_fd >= 0) close(dir_fd);
    return Status::FromErrno(err, "remove stale '" + socket_path + "'");
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  server->listen_fd_ = fd;
  // Until the chmod below the socket has the umask's mode, which never lets others connect
  // (connecting needs write permission) unless the umask is 0.
  int rc = fd < 0 ? -1 : bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  if (dir_fd >= 0) close(dir_fd);
  if (rc != 0) return Status::FromErrno(err, "bind '" + socket_path + "'");
  if (chmod(socket_path.c_str(), 0600) != 0 || listen(fd, 16) != 0) {
    err = errno;
    unlink(socket_path.c_str());
    return Status::FromErrno(err, "listen on '" + socket_path + "'");
  }
  server->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (server->wake_fd_ < 0) {
    err = errno;
    unlink(socket_path.c_str());
    return Status::FromErrno(err, "eventfd");
  }
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

ControlServer::~ControlServer() {
  Stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void ControlServer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    if (active_ > 0) spdlog::info("waiting for {} forwarded command(s) to finish", active_);
  }
  uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    // An eventfd write only fails on overflow; the acceptor wakes anyway.
  }
  if (acceptor_.joinable()) acceptor_.join();
  unlink(path_.c_str());
  std::list<Worker> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) w.thread.join();
}

void ControlServer::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("control socket: poll: {}", strerror(errno));
      return;
    }
    if (p[1].revents) return;
    int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ || active_ >= kMaxConcurrentCommands) {
      spdlog::warn("control socket: refused a connection ({} commands running)", active_);
      close(conn);
      continue;
    }
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    ++active_;
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers_.push_back(Worker{std::thread([this, conn, done] {
                                Serve(conn);
                                {
                                  std::lock_guard<std::mutex> l(mu_);
                                  --active_;
                                }
                                done->store(true);
                              }),
                              done});
  }
}

void ControlServer::Serve(int conn) {
  ucred cred{};
  socklen_t cred_len = sizeof(cred);
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0 ||
      (cred.uid != 0 && cred.uid != geteuid())) {
    spdlog::warn("control socket: refused uid {} (pid {})", cred.uid, cred.pid);
    close(conn);
    return;
  }
  timeval tv{kRequestTimeoutSec, 0};
  setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

  char header[kControlHeaderSize];
  std::vector<int> fds;
  int err = RecvHeader(conn, header, &fds);
  if (err) {
    if (err != ECONNRESET) spdlog::warn("control socket: bad request: {}", strerror(err));
    close(conn);  // a probe (ControlSocketAccepts) sends nothing
    return;
  }
  uint32_t size = 0;
  Status s = DecodeControlHeader(std::string_view(header, sizeof(header)), &size);
  std::string payload;
  ControlRequest req;
  if (s.ok()) {
    payload.resize(size);
    err = RecvAll(conn, payload.data(), size);
    if (err) s = Status::FromErrno(err, "read control request");
  }
  if (s.ok()) s = ControlRequest::DecodePayload(payload, &req);
  if (s.ok() && fds.size() != 3)
    s = Status::InvalidArgument("control request without 3 descriptors");
  if (!s.ok()) {
    spdlog::warn("control socket: from pid {}: {}", cred.pid, s.ToString());
    if (fds.size() == 3) dprintf(fds[2], "pgbackfs: error: %s\n", s.message().c_str());
    CloseAll(&fds);
    std::string reply = EncodeControlReply(2);
    SendAll(conn, reply.data(), reply.size());
    close(conn);
    return;
  }

  // Only the command's name: its arguments may hold secrets (a connection string's password).
  std::string command_name = req.args.size() > 1 ? req.args[1] : "";
  spdlog::info("running forwarded command '{}' from pid {}", command_name, cred.pid);
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  CommandIo io;
  io.cwd = req.cwd;
  io.err_is_tty = isatty(fds[2]);
  io.cancelled = cancelled.get();
  close(fds[0]);  // no command reads its stdin yet
  io.out = OpenStream(fds[1], cancelled, /*unbuffered=*/false);
  io.err = OpenStream(fds[2], cancelled, /*unbuffered=*/true);

  int done_fd = eventfd(0, EFD_CLOEXEC);
  int code = 1;
  std::thread command([&] {
    try {
      code = run_(req.args, &io);
    } catch (const std::exception& e) {
      fprintf(io.err, "pgbackfs: error: %s\n", e.what());
      code = 1;
    } catch (...) {
      fprintf(io.err, "pgbackfs: error: the command failed in the mount daemon\n");
      code = 1;
    }
    fflush(io.out);
    fflush(io.err);
    uint64_t one = 1;
    if (done_fd >= 0 && write(done_fd, &one, sizeof(one)) < 0) {
      // Cannot fail on a fresh eventfd.
    }
  });
  // Watch the client while the command runs: if it goes away, the command is cancelled.
  bool client_gone = false;
  while (done_fd >= 0) {
    pollfd p[2] = {{done_fd, POLLIN, 0}, {conn, static_cast<short>(POLLRDHUP), 0}};
    int nfds = client_gone ? 1 : 2;
    if (poll(p, nfds, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents) break;
    if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
      client_gone = true;
      cancelled->store(true);
      spdlog::info("client pid {} went away; cancelling its command", cred.pid);
    } else if (p[1].revents & POLLIN) {
      char junk[256];  // a client has nothing more to say; ignore it
      if (recv(conn, junk, sizeof(junk), MSG_DONTWAIT) == 0) {
        client_gone = true;
        cancelled->store(true);
      }
    }
  }
  command.join();
  if (done_fd >= 0) close(done_fd);
  fclose(io.out);
  fclose(io.err);
  spdlog::info("forwarded command '{}' from pid {} exited with {}", command_name, cred.pid, code);
  std::string reply = EncodeControlReply(code);
  SendAll(conn, reply.data(), reply.size());
  close(conn);
}

}  // namespace pgbackfs
