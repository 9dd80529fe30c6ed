// Fuzzes the control-socket protocol (tools/control.h): the request header and payload a client
// of the mount daemon sends, and the reply the client reads. A request that decodes must encode
// to the same bytes, stay within the documented limits, and carry an absolute working directory.
//
// Input: byte 0 picks the decoder (0: header + payload as one stream, 1: reply), the rest is the
// bytes on the socket.
#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_util.h"
#include "tools/control.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pgbackfs;
  if (size < 1) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    int code = -1;
    if (DecodeControlReply(in, &code).ok()) {
      FUZZ_CHECK(code >= 0 && code <= 255);
      FUZZ_CHECK(EncodeControlReply(code) == in);
    }
    return 0;
  }
  if (in.size() < kControlHeaderSize) return 0;
  uint32_t payload_size = 0;
  if (!DecodeControlHeader(in.substr(0, kControlHeaderSize), &payload_size).ok()) return 0;
  FUZZ_CHECK(payload_size <= kMaxControlPayload);
  std::string_view payload = in.substr(kControlHeaderSize);
  if (payload.size() < payload_size) return 0;  // the daemon waits for the rest, then times out
  payload = payload.substr(0, payload_size);
  ControlRequest req;
  if (!ControlRequest::DecodePayload(payload, &req).ok()) return 0;
  FUZZ_CHECK(!req.args.empty() && req.args.size() <= kMaxControlArgs);
  FUZZ_CHECK(!req.cwd.empty() && req.cwd[0] == '/');
  std::string again = req.Encode();
  FUZZ_CHECK(again.substr(kControlHeaderSize) == payload);
  FUZZ_CHECK(again.substr(0, kControlHeaderSize) == in.substr(0, kControlHeaderSize));
  return 0;
}
