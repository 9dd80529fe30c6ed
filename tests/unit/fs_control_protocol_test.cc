// The mount daemon's control socket (tools/control.h): encoding, validation of outside input,
// and a live server with a forwarding client.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "repo/coding.h"
#include "tools/control.h"

namespace pgbackfs {
namespace {

// A raw connection to a (short) socket path, or -1.
int socket_fd(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string Payload(const std::string& encoded) { return encoded.substr(kControlHeaderSize); }

TEST(ControlProtocol, RequestRoundTrip) {
  ControlRequest req{{"pgbackfs", "list", "/r", std::string("with space and \xff")}, "/home/x"};
  std::string enc = req.Encode();
  uint32_t size;
  ASSERT_TRUE(DecodeControlHeader(enc.substr(0, kControlHeaderSize), &size).ok());
  EXPECT_EQ(size, enc.size() - kControlHeaderSize);
  ControlRequest out;
  ASSERT_TRUE(ControlRequest::DecodePayload(Payload(enc), &out).ok());
  EXPECT_EQ(out.args, req.args);
  EXPECT_EQ(out.cwd, req.cwd);
}

TEST(ControlProtocol, RejectsBadHeaders) {
  uint32_t size;
  EXPECT_FALSE(DecodeControlHeader("", &size).ok());
  EXPECT_FALSE(DecodeControlHeader(std::string(12, 'x'), &size).ok());
  std::string h = ControlRequest{{"a"}, "/"}.Encode().substr(0, 8);
  PutFixed32(&h, kMaxControlPayload + 1);
  EXPECT_FALSE(DecodeControlHeader(h, &size).ok());
}

TEST(ControlProtocol, RejectsMalformedPayloads) {
  ControlRequest out;
  auto bad = [&out](const std::string& payload) {
    return !ControlRequest::DecodePayload(payload, &out).ok();
  };
  std::string good = Payload(ControlRequest{{"pgbackfs", "list"}, "/tmp"}.Encode());
  ASSERT_FALSE(bad(good));
  // Every truncation of a good payload is refused.
  for (size_t n = 0; n < good.size(); ++n) EXPECT_TRUE(bad(good.substr(0, n))) << n;
  EXPECT_TRUE(bad(good + "x"));  // trailing bytes
  EXPECT_TRUE(bad(Payload(ControlRequest{{}, "/tmp"}.Encode())));
  EXPECT_TRUE(bad(Payload(ControlRequest{{"a"}, "relative"}.Encode())));
  EXPECT_TRUE(bad(Payload(ControlRequest{{"a"}, ""}.Encode())));
  EXPECT_TRUE(bad(Payload(ControlRequest{{std::string("a\0b", 3)}, "/"}.Encode())));
  EXPECT_TRUE(bad(Payload(ControlRequest{{"a"}, std::string("/a\0b", 4)}.Encode())));
  std::vector<std::string> many(kMaxControlArgs + 1, "x");
  EXPECT_TRUE(bad(Payload(ControlRequest{many, "/"}.Encode())));
  // A length that points far past the end.
  std::string huge;
  PutFixed32(&huge, 1);
  PutFixed32(&huge, 0xffffffffu);
  huge += "abc";
  EXPECT_TRUE(bad(huge));
}

TEST(ControlProtocol, Replies) {
  int code = -1;
  ASSERT_TRUE(DecodeControlReply(EncodeControlReply(0), &code).ok());
  EXPECT_EQ(code, 0);
  ASSERT_TRUE(DecodeControlReply(EncodeControlReply(2), &code).ok());
  EXPECT_EQ(code, 2);
  EXPECT_FALSE(DecodeControlReply(EncodeControlReply(256), &code).ok());
  EXPECT_FALSE(DecodeControlReply("short", &code).ok());
}

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pgbackfs-control-test.XXXXXX";
    ASSERT_TRUE(mkdtemp(tmpl));
    dir_ = tmpl;
    spdlog::set_level(spdlog::level::warn);  // the default logger writes to our stdout
  }
  void TearDown() override {
    spdlog::set_level(spdlog::level::info);
    std::filesystem::remove_all(dir_);
  }

  // Runs ForwardCommand with our stdout and stderr sent to files; returns the exit code.
  int Forward(const std::string& socket, const std::vector<std::string>& args, std::string* out,
              std::string* err) {
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    int out_fd = open((dir_ + "/out").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    int err_fd = open((dir_ + "/err").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    int code = ForwardCommand(socket, args, "/some/cwd");
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    close(out_fd);
    close(err_fd);
    *out = Slurp(dir_ + "/out");
    *err = Slurp(dir_ + "/err");
    return code;
  }
  static std::string Slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string dir_;
};

TEST_F(ControlServerTest, ForwardsArgsCwdAndOutputAndReturnsTheExitCode) {
  std::string socket = dir_ + "/control.sock";
  auto server =
      ControlServer::Start(socket, [](const std::vector<std::string>& args, CommandIo* io) {
        fprintf(io->out, "out:");
        for (const auto& a : args) fprintf(io->out, " %s", a.c_str());
        fprintf(io->out, " cwd=%s\n", io->cwd.c_str());
        fprintf(io->err, "err line\n");
        EXPECT_FALSE(io->Cancelled());
        return args.size() > 2 ? 7 : 0;
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  struct stat st;
  ASSERT_EQ(stat(socket.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(ControlSocketAccepts(socket));

  std::string out, err;
  EXPECT_EQ(Forward(socket, {"pgbackfs", "list", "/repo"}, &out, &err), 7);
  EXPECT_EQ(out, "out: pgbackfs list /repo cwd=/some/cwd\n");
  EXPECT_EQ(err, "err line\n");
  EXPECT_EQ(Forward(socket, {"pgbackfs", "x"}, &out, &err), 0);

  (*server)->Stop();
  EXPECT_NE(stat(socket.c_str(), &st), 0);  // removed at shutdown
  EXPECT_FALSE(ControlSocketAccepts(socket));
  EXPECT_EQ(Forward(socket, {"pgbackfs", "x"}, &out, &err), 1);
  EXPECT_NE(err.find("cannot reach the mount daemon"), std::string::npos);
}

TEST_F(ControlServerTest, SurvivesGarbageAndClientsThatGoAway) {
  std::string socket = dir_ + "/control.sock";
  std::atomic<bool> saw_cancel{false};
  auto server =
      ControlServer::Start(socket, [&](const std::vector<std::string>& args, CommandIo* io) {
        if (args.size() > 1 && args[1] == "slow") {
          for (int i = 0; i < 200 && !io->Cancelled(); ++i) usleep(10000);
          saw_cancel = io->Cancelled();
        }
        return 0;
      });
  ASSERT_TRUE(server.ok());
  auto raw = [&socket](const std::string& bytes) {
    int fd = socket_fd(socket);
    if (fd < 0) return;
    send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    char buf[64];
    (void)!recv(fd, buf, sizeof(buf), 0);  // the server replies or closes
    close(fd);
  };
  raw("GET / HTTP/1.0\r\n\r\n");
  std::string huge(8, '\0');
  memcpy(huge.data(), "PGBFCTL1", 8);
  PutFixed32(&huge, 0xffffffffu);
  raw(huge);
  raw(ControlRequest{{"pgbackfs", "list"}, "/"}.Encode());  // no descriptors
  // A client killed while its command runs: the command sees the cancellation.
  {
    int fd = socket_fd(socket);
    ASSERT_GE(fd, 0);
    std::string msg = ControlRequest{{"pgbackfs", "slow"}, "/"}.Encode();
    int fds[3] = {0, 1, 2};
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
    ASSERT_GT(sendmsg(fd, &mh, MSG_NOSIGNAL), 0);
    usleep(100000);
    close(fd);
  }
  for (int i = 0; i < 300 && !saw_cancel; ++i) usleep(10000);
  EXPECT_TRUE(saw_cancel);
  // Still serving.
  std::string out, err;
  EXPECT_EQ(Forward(socket, {"pgbackfs", "ok"}, &out, &err), 0);
}

TEST_F(ControlServerTest, StaleSocketFileAndLongPaths) {
  // A socket file whose daemon died: nothing accepts.
  std::string stale = dir_ + "/stale.sock";
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, stale.c_str());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);
  }
  EXPECT_FALSE(ControlSocketAccepts(stale));
  // A new server replaces it.
  auto server =
      ControlServer::Start(stale, [](const std::vector<std::string>&, CommandIo*) { return 3; });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::string out, err;
  EXPECT_EQ(Forward(stale, {"pgbackfs"}, &out, &err), 3);
  server->reset();

  // A path longer than sun_path.
  std::string deep = dir_;
  while (deep.size() < 150) deep += "/deeper-directory";
  std::filesystem::create_directories(deep);
  std::string socket = deep + "/control.sock";
  auto deep_server =
      ControlServer::Start(socket, [](const std::vector<std::string>&, CommandIo*) { return 4; });
  ASSERT_TRUE(deep_server.ok()) << deep_server.status().ToString();
  EXPECT_TRUE(ControlSocketAccepts(socket));
  EXPECT_EQ(Forward(socket, {"pgbackfs"}, &out, &err), 4);
}

}  // namespace
}  // namespace pgbackfs
