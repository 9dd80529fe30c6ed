// The libfuse low-level operation table over a Filesystem (fuse_req_userdata). Internal to fs/.
#pragma once

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

namespace pgbackfs {

// Every handler decodes its request, calls one Filesystem method and replies.
const fuse_lowlevel_ops& FilesystemOps();

}  // namespace pgbackfs
