// The one place where a repository Status becomes an errno for the kernel.
#pragma once

#include "repo/status.h"

namespace pgbackfs {

// 0 for OK. Corruption and IOError become EIO: the caller logs what failed and where.
int StatusToErrno(const Status& status);

}  // namespace pgbackfs
