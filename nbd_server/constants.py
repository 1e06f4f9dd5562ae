"""NBD wire constants (doc/proto.md in NetworkBlockDevice/nbd), the integer
layouts both phases use, and the one errno -> NBD error mapping.

Invariants
- The numbers are the spec's; the few limits that are this server's choice
  say so.
- POSIX errno values become NBD error codes in one place, `nbd_error()`,
  derived from rokfs.errors.ERRORS (the NBD error of each error class's
  errno) plus the OS errnos no class carries; anything else is an I/O error.
- A message sent to the peer is valid UTF-8 within the spec's string limit
  (`encode_message()`).
"""

import errno as E
import struct

from rokfs.errors import ERRORS

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0          # handshake flags
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0        # client flags
FLAG_C_NO_ZEROES = 1 << 1

TF_HAS_FLAGS = 1 << 0                 # transmission flags
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

STATE_HOLE = 1 << 0                   # base:allocation flags
STATE_ZERO = 1 << 1
BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1                # ours: the id SET_META_CONTEXT gives it

MAX_STRING = 4096                     # spec limit on names and messages
MAX_PAYLOAD = 32 * 1024 * 1024        # ours (2**25): advertised maximum payload

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")

NBD_ERRORS = {"EPERM": NBD_EPERM, "EIO": NBD_EIO, "ENOMEM": NBD_ENOMEM, "EINVAL": NBD_EINVAL,
              "ENOSPC": NBD_ENOSPC, "EOVERFLOW": NBD_EOVERFLOW, "ENOTSUP": NBD_ENOTSUP,
              "ESHUTDOWN": NBD_ESHUTDOWN}
# errnos no rokfs error class carries: the OS's, passed on by the engine or
# returned by the request checks of this server
_OS_ERRNOS = {E.EPERM: "EPERM", E.EACCES: "EPERM", E.ENOMEM: "ENOMEM", E.EDQUOT: "ENOSPC",
              E.EFBIG: "ENOSPC", E.EOVERFLOW: "EOVERFLOW", E.ESHUTDOWN: "ESHUTDOWN"}


def _errno_table():
    """errno -> NBD error: each rokfs error class's errno as its row of
    rokfs.errors.ERRORS says, then the OS's own errnos."""
    by_errno = {kind.errno: kind.nbd for kind in reversed(ERRORS)}
    return {errno: NBD_ERRORS[name] for errno, name in {**by_errno, **_OS_ERRNOS}.items()}


_NBD_OF_ERRNO = _errno_table()


def nbd_error(posix_errno):
    """The one errno -> NBD error mapping; anything unknown is an I/O error."""
    return _NBD_OF_ERRNO.get(posix_errno, NBD_EIO)


def encode_message(text):
    """A human-readable message within the string limit, still valid UTF-8."""
    return text[:MAX_STRING // 4].encode()
