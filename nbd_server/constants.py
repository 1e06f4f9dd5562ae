"""NBD wire constants (doc/proto.md in NetworkBlockDevice/nbd), the integer
layouts both phases use, and the one errno -> NBD error mapping.

Invariants
- The numbers are the spec's; the few limits that are this server's choice
  say so.
- POSIX errno values become NBD error codes in one place, `nbd_error()`;
  anything it does not know is an I/O error.
- A message sent to the peer is valid UTF-8 within the spec's string limit
  (`encode_message()`).
"""

import errno as E
import struct

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

_NBD_ERRORS = {
    E.EPERM: NBD_EPERM, E.EROFS: NBD_EPERM, E.EACCES: NBD_EPERM,
    E.EIO: NBD_EIO, E.ENOMEM: NBD_ENOMEM, E.EINVAL: NBD_EINVAL,
    E.ENOSPC: NBD_ENOSPC, E.EDQUOT: NBD_ENOSPC, E.EFBIG: NBD_ENOSPC,
    E.EOVERFLOW: NBD_EOVERFLOW, E.ENOTSUP: NBD_ENOTSUP,
    E.EOPNOTSUPP: NBD_ENOTSUP, E.ESHUTDOWN: NBD_ESHUTDOWN,
}


def nbd_error(posix_errno):
    """The one errno -> NBD error mapping; anything unknown is an I/O error."""
    return _NBD_ERRORS.get(posix_errno, NBD_EIO)


def encode_message(text):
    """A human-readable message within the string limit, still valid UTF-8."""
    return text[:MAX_STRING // 4].encode()
