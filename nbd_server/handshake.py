"""The NBD handshake, fixed newstyle, without I/O: the greeting, the client
flags, then options until an export is entered or the session ends.

Invariants
- Option data is parsed by pure functions; a malformed option gets
  NBD_REP_ERR_INVALID and the haggling goes on. Only what no option reply
  can answer is a violation: a bad magic, unknown client flags, an
  EXPORT_NAME that is not a string, too long or before required TLS, bytes
  sent after STARTTLS before its reply, end of file inside a message.
- Option data larger than MAX_OPTION_DATA is never buffered: it is skipped
  as it arrives and the option refused (an EXPORT_NAME that large is a
  violation).
- LIST, INFO, GO and EXPORT_NAME pause the connection until the application
  answers them; an accepted STARTTLS pauses it until `tls_started()`; every
  other option is answered here.
- With TLS required, no option but STARTTLS and ABORT is served before TLS
  is up. STARTTLS forgets what was negotiated before it (structured
  replies, the meta context).
- Entering transmission produces the `Session`, built from the flags
  `transmission_flags()` advertised to the client.
"""

import struct

from .channel import State
from .constants import (
    BASE_ALLOCATION, BASE_ALLOCATION_ID, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_DESCRIPTION,
    INFO_EXPORT, INFO_NAME, MAX_STRING, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
    OPT_LIST, OPT_LIST_META_CONTEXT, OPT_REPLY_MAGIC, OPT_SET_META_CONTEXT, OPT_STARTTLS,
    OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY, REP_ERR_TLS_REQD,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
    U16, U32, U64, encode_message)
from .events import (Closed, ExportInfo, ExportQuery, ListExports, LocalProtocolError,
                     StartTLS)
from .transmission import Session, transmission_flags

TLS_MODES = ("off", "on", "require")
MAX_OPTION_DATA = 64 * 1024           # larger options are drained, not parsed

_TLS_EXEMPT = frozenset((OPT_STARTTLS, OPT_ABORT))
_GREETING = struct.Struct(">QQH")
_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_ZEROES_124 = bytes(124)


# -- option data ---------------------------------------------------------------

class _OptionInvalid(Exception):
    """Raised while parsing option data: reply NBD_REP_ERR_INVALID."""


def _string(data):
    """Decode a protocol string, or None if it is not one."""
    if len(data) > MAX_STRING or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _take(data, pos, n):
    if n < 0 or pos + n > len(data):
        raise _OptionInvalid("option data too short")
    return data[pos:pos + n], pos + n


def _take_u32(data, pos):
    raw, pos = _take(data, pos, 4)
    return U32.unpack(raw)[0], pos


def _take_string(data, pos, n):
    raw, pos = _take(data, pos, n)
    text = _string(raw)
    if text is None:
        raise _OptionInvalid("not a valid string")
    return text, pos


def parse_info_request(data):
    """INFO/GO option data -> (name, info requests)."""
    namelen, pos = _take_u32(data, 0)
    name, pos = _take_string(data, pos, namelen)
    raw, pos = _take(data, pos, 2)
    count = U16.unpack(raw)[0]
    raw, pos = _take(data, pos, 2 * count)
    if pos != len(data):
        raise _OptionInvalid("trailing bytes after information requests")
    return name, struct.unpack(f">{count}H", raw)


def parse_meta_request(data):
    """LIST/SET_META_CONTEXT option data -> (export name, queries)."""
    namelen, pos = _take_u32(data, 0)
    name, pos = _take_string(data, pos, namelen)
    count, pos = _take_u32(data, pos)
    queries = []
    for _ in range(count):
        qlen, pos = _take_u32(data, pos)
        query, pos = _take_string(data, pos, qlen)
        if ":" not in query:
            raise _OptionInvalid(f"query {query!r} has no namespace")
        queries.append(query)
    if pos != len(data):
        raise _OptionInvalid("trailing bytes after queries")
    return name, queries


def meta_matches(queries, listing):
    """Does any query select base:allocation? Empty list/`base:` lists it."""
    if listing and not queries:
        return True
    wild = ("base:",) if listing else ()
    return any(q == BASE_ALLOCATION or q in wild for q in queries)


# -- the phase -----------------------------------------------------------------

class Handshake:
    """Option haggling on a channel; queues the greeting at once."""

    def __init__(self, channel, tls="off"):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}")
        self.channel = channel
        self.tls_mode = tls
        self.tls_active = False
        self.no_zeroes = False
        self.structured = False
        self._meta = None             # export name base:allocation was set for
        self._pending = None          # the event awaiting the application's answer
        channel.queue(_GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))

    # ---- input ----

    def read_client_flags(self):
        """Parse the client flags, then go on with the options."""
        ch = self.channel
        if ch.buffered < 4:
            return ch.need(ch.buffered, 4, "the client flags")
        flags = U32.unpack(ch.consume(4))[0]
        if flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
            ch.violation(f"unknown client flags {flags:#x}")
        self.no_zeroes = bool(flags & FLAG_C_NO_ZEROES)
        ch.move("flags")
        return self.next_option()

    def next_option(self):
        """The next event the options produce, or NEED_DATA; options that
        need no application answer are answered on the way."""
        while True:
            if self.channel.skip:
                return self.channel.need(1, 2, "oversized option data")
            event = self._read_option()
            if event is not None:
                return event

    def _read_option(self):
        """Parse one option; returns an event, NEED_DATA, or None if answered."""
        ch = self.channel
        have = ch.buffered
        if have < 16:
            return ch.need(have, 16, "an option header")
        magic, opt, length = _OPT_HEADER.unpack_from(ch.buf, ch.pos)
        if magic != IHAVEOPT:
            ch.violation(f"bad option magic {magic:#x}")
        if length > MAX_OPTION_DATA:
            return self._oversized_option(opt, length)
        if have < 16 + length:
            return ch.need(have, 16 + length, "option data")
        ch.pos += 16
        data = ch.consume(length)
        return self._dispatch_option(opt, data)

    def _oversized_option(self, opt, length):
        if opt == OPT_EXPORT_NAME:
            self.channel.violation("export name too long")
        self.channel.pos += 16
        self.channel.drain(length)
        kind = REP_ERR_TOO_BIG if opt in _OPTIONS else REP_ERR_UNSUP
        self._opt_reply(opt, kind, b"option data too large")
        return None

    def _dispatch_option(self, opt, data):
        if self.tls_mode == "require" and not self.tls_active and opt not in _TLS_EXEMPT:
            if opt == OPT_EXPORT_NAME:
                self.channel.violation("TLS required before NBD_OPT_EXPORT_NAME")
            return self._opt_reply(opt, REP_ERR_TLS_REQD, b"TLS is required")
        handler = _OPTIONS.get(opt)
        if handler is None:
            return self._opt_reply(opt, REP_ERR_UNSUP, b"unsupported option")
        try:
            return handler(self, opt, data)
        except _OptionInvalid as exc:
            return self._opt_reply(opt, REP_ERR_INVALID, str(exc).encode())

    def _opt_reply(self, opt, kind, data=b""):
        self.channel.queue(_OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, kind, len(data)) + data)
        return None

    def _opt_export_name(self, opt, data):
        name = _string(data)
        if name is None:
            self.channel.violation("export name is not a valid string")
        return self._ask(ExportQuery(name, opt))

    def _opt_abort(self, opt, data):
        self._opt_reply(opt, REP_ACK)
        self.channel.move("abort")
        return Closed("abort")

    def _opt_list(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_LIST takes no data")
        return self._ask(ListExports())

    def _opt_starttls(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_STARTTLS takes no data")
        if self.tls_active:
            raise _OptionInvalid("TLS is already active")
        if self.tls_mode == "off":
            return self._opt_reply(opt, REP_ERR_POLICY, b"TLS is not enabled on this server")
        if self.channel.buffered:
            self.channel.violation("data sent after NBD_OPT_STARTTLS before the reply")
        self._opt_reply(opt, REP_ACK)
        self.structured, self._meta = False, None
        self.channel.move("starttls")
        return StartTLS()

    def _opt_info(self, opt, data):
        name, requests = parse_info_request(data)
        return self._ask(ExportQuery(name, opt, requests))

    def _opt_structured_reply(self, opt, data):
        if data:
            raise _OptionInvalid("NBD_OPT_STRUCTURED_REPLY takes no data")
        if self.structured:
            raise _OptionInvalid("structured replies already negotiated")
        self.structured = True
        return self._opt_reply(opt, REP_ACK)

    def _opt_meta_context(self, opt, data):
        listing = opt == OPT_LIST_META_CONTEXT
        if not listing:
            self._meta = None         # replaced even when the option fails
        if not self.structured:
            raise _OptionInvalid("negotiate structured replies first")
        name, queries = parse_meta_request(data)
        if meta_matches(queries, listing):
            ctx_id = 0 if listing else BASE_ALLOCATION_ID
            payload = U32.pack(ctx_id) + BASE_ALLOCATION.encode()
            self._opt_reply(opt, REP_META_CONTEXT, payload)
            if not listing:
                self._meta = name
        return self._opt_reply(opt, REP_ACK)

    def _ask(self, event):
        self._pending = event
        self.channel.move("ask")
        return event

    # ---- answers ----

    def send_export_list(self, exports):
        """Answer ListExports with ExportInfo (or (name, description)) items."""
        self._expect(ListExports)
        for item in exports:
            name, desc = (item.name, item.description) if isinstance(item, ExportInfo) else item
            raw = name.encode()
            self._opt_reply(OPT_LIST, REP_SERVER, U32.pack(len(raw)) + raw + desc.encode())
        self._opt_reply(OPT_LIST, REP_ACK)
        self.channel.move("answered")

    def accept_export(self, info):
        """Answer an ExportQuery with the export's ExportInfo; returns the
        Session if that enters transmission, else None."""
        query = self._expect(ExportQuery)
        flags = transmission_flags(info, self.structured)
        if query.option == OPT_EXPORT_NAME:
            self.channel.queue(U64.pack(info.size) + U16.pack(flags)
                               + (b"" if self.no_zeroes else _ZEROES_124))
        else:
            self._send_infos(query, info, flags)
            self._opt_reply(query.option, REP_ACK)
        if not query.enters_transmission:
            return self.channel.move("answered")
        session = Session(info.size, flags, self.structured,
                          self._meta == query.name, info.min_block, info.max_payload)
        self.channel.move("go")
        return session

    def reject_export(self, reply=REP_ERR_UNKNOWN, message=""):
        """Refuse an ExportQuery; after EXPORT_NAME that ends the session."""
        query = self._expect(ExportQuery)
        if not reply & (1 << 31):
            raise LocalProtocolError("reject_export needs an error reply type")
        if query.option == OPT_EXPORT_NAME:
            return self.channel.move("refused")
        self._opt_reply(query.option, reply, encode_message(message))
        self.channel.move("answered")

    def _send_infos(self, query, info, flags):
        opt = query.option
        export = U16.pack(INFO_EXPORT) + U64.pack(info.size) + U16.pack(flags)
        self._opt_reply(opt, REP_INFO, export)
        if INFO_NAME in query.info_requests:
            self._opt_reply(opt, REP_INFO, U16.pack(INFO_NAME) + info.name.encode())
        if INFO_DESCRIPTION in query.info_requests and info.description:
            self._opt_reply(opt, REP_INFO, U16.pack(INFO_DESCRIPTION) + info.description.encode())
        sizes = struct.pack(">HIII", INFO_BLOCK_SIZE, info.min_block,
                            max(info.preferred_block, info.min_block, 512), info.max_payload)
        self._opt_reply(opt, REP_INFO, sizes)

    def _expect(self, kind):
        if self.channel.state is not State.WAIT_APP or not isinstance(self._pending, kind):
            raise LocalProtocolError(f"no {kind.__name__} is waiting for an answer")
        pending, self._pending = self._pending, None
        return pending

    def tls_started(self):
        """The stream is now TLS; option haggling continues over it."""
        self.channel.move("tls-up")
        self.tls_active = True


_OPTIONS = {
    OPT_EXPORT_NAME: Handshake._opt_export_name,
    OPT_ABORT: Handshake._opt_abort,
    OPT_LIST: Handshake._opt_list,
    OPT_STARTTLS: Handshake._opt_starttls,
    OPT_INFO: Handshake._opt_info,
    OPT_GO: Handshake._opt_info,
    OPT_STRUCTURED_REPLY: Handshake._opt_structured_reply,
    OPT_LIST_META_CONTEXT: Handshake._opt_meta_context,
    OPT_SET_META_CONTEXT: Handshake._opt_meta_context,
}
