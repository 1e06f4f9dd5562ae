"""Byte-level tests of the sans-I/O NBD protocol (nbd_server.protocol and its phases)."""

import errno
import struct

import pytest

from nbd_server import constants as C
from nbd_server.channel import State
from nbd_server.events import (Closed, ExportInfo, ExportQuery, ListExports, LocalProtocolError,
                               NEED_DATA, PAUSED, RemoteProtocolError, Request, StartTLS,
                               WriteData)
from nbd_server.handshake import MAX_OPTION_DATA, meta_matches
from nbd_server.protocol import ServerConnection
from nbd_server.transmission import (MAX_DRAIN, block_status_descriptors, transmission_flags,
                                     zero_runs)
from nbd_helpers import (GREETING, Catalog, client_flags, drive, error_of, info_data,
                               meta_data, opt, request, split_option_replies, split_replies,
                               write)

DATA = ExportInfo("data", 1 << 20, description="a volume")
SNAP = ExportInfo("data@s1", 1 << 20, read_only=True)
CATALOG = Catalog(DATA, SNAP)


def handshake(name="data", structured=True, meta=None, tls="off"):
    """A connection in transmission phase on `name`."""
    conn = ServerConnection(tls=tls)
    conn.data_to_send()
    data = client_flags()
    if structured:
        data += opt(C.OPT_STRUCTURED_REPLY)
    if meta is not None:
        data += opt(C.OPT_SET_META_CONTEXT, meta_data(meta, ["base:allocation"]))
    data += opt(C.OPT_GO, info_data(name))
    drive(conn, data, CATALOG)
    assert conn.state is State.TRANSMISSION
    return conn


def replies(conn, data, read_lengths=None):
    events, out = drive(conn, data)
    return events, split_replies(out, read_lengths)


# -- handshake ----------------------------------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes():
    conn = ServerConnection()
    assert b"".join(conn.data_to_send()) == GREETING
    assert conn.next_event() is NEED_DATA


def test_go_literal_bytes():
    conn = ServerConnection()
    conn.data_to_send()
    wire = bytes.fromhex(
        "00000003"                                   # client flags: fixed, no zeroes
        "49484156454f5054" "00000007" "0000000c"     # IHAVEOPT, GO, 12 bytes
        "00000004" "64617461" "0001" "0001")         # "data", 1 request: NAME
    events, out = drive(conn, wire, CATALOG)
    assert events == [ExportQuery("data", C.OPT_GO, (C.INFO_NAME,))]
    flags = C.TF_HAS_FLAGS | C.TF_SEND_FLUSH | C.TF_SEND_FUA | C.TF_SEND_TRIM | \
        C.TF_SEND_WRITE_ZEROES | C.TF_CAN_MULTI_CONN | C.TF_SEND_CACHE | C.TF_SEND_FAST_ZERO
    expected = bytes.fromhex(
        "0003e889045565a9" "00000007" "00000003" "0000000c" "0000" "0000000000100000")
    expected += struct.pack(">H", flags)
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000003" "00000006" "0001") + b"data"
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000003" "0000000e" "0003"
                              "00000001" "00001000" "02000000")
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000001" "00000000")
    assert out == expected
    assert conn.state is State.TRANSMISSION


BEFORE_GO = (client_flags() + opt(C.OPT_LIST) + opt(99, b"junk") + opt(C.OPT_STRUCTURED_REPLY)
          + opt(C.OPT_LIST_META_CONTEXT, meta_data("data", []))
          + opt(C.OPT_SET_META_CONTEXT, meta_data("data", ["base:allocation", "x-other:thing"]))
          + opt(C.OPT_INFO, info_data("nope")) + opt(C.OPT_INFO, info_data("data@s1", [2])))
SCRIPT = (BEFORE_GO + opt(C.OPT_GO, info_data("data", [C.INFO_BLOCK_SIZE]))
          + request(C.CMD_WRITE, 0, 3, cookie=7, data=b"abc")
          + request(C.CMD_READ, 0, 3, cookie=8) + request(C.CMD_BLOCK_STATUS, 0, 4096, cookie=9)
          + request(C.CMD_DISC))


def test_bytewise_feeding_gives_the_same_events_and_bytes():
    whole = drive(ServerConnection(), SCRIPT, CATALOG)
    bytewise = drive(ServerConnection(), SCRIPT, CATALOG, bytewise=True)
    assert whole == bytewise
    events = whole[0]
    assert [type(e).__name__ for e in events] == [
        "ListExports", "ExportQuery", "ExportQuery", "ExportQuery",
        "Request", "Request", "Request", "Closed"]
    assert events[4].data == b"abc" and events[4].cookie == 7
    assert events[-1] == Closed("disc")


def test_option_replies_of_the_script():
    conn = ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, BEFORE_GO, CATALOG)
    reps = split_option_replies(out)
    kinds = [(o, k) for o, k, _ in reps]
    assert kinds[:3] == [(C.OPT_LIST, C.REP_SERVER)] * 2 + [(C.OPT_LIST, C.REP_ACK)]
    assert reps[0][2] == b"\0\0\0\x04data" + b"a volume"
    assert kinds[3] == (99, C.REP_ERR_UNSUP)
    assert kinds[4] == (C.OPT_STRUCTURED_REPLY, C.REP_ACK)
    assert kinds[5:7] == [(C.OPT_LIST_META_CONTEXT, C.REP_META_CONTEXT), (C.OPT_LIST_META_CONTEXT, C.REP_ACK)]
    assert reps[7] == (C.OPT_SET_META_CONTEXT, C.REP_META_CONTEXT, b"\0\0\0\x01base:allocation")
    assert kinds[8] == (C.OPT_SET_META_CONTEXT, C.REP_ACK)
    assert reps[9][:2] == (C.OPT_INFO, C.REP_ERR_UNKNOWN) and b"nope" in reps[9][2]
    info = reps[10][2]
    assert reps[10][1] == C.REP_INFO and struct.unpack(">HQH", info)[2] & C.TF_READ_ONLY
    assert kinds[-1] == (C.OPT_INFO, C.REP_ACK)
    assert conn.state is State.OPTIONS


def test_script_negotiates_block_status():
    conn = ServerConnection()
    events, out = drive(conn, SCRIPT, CATALOG)
    assert conn.session.block_status and conn.session.structured


@pytest.mark.parametrize("flags", [4, 0x80000000, 0xffffffff])
def test_unknown_client_flags_are_a_sticky_error(flags):
    conn = ServerConnection()
    conn.receive_data(struct.pack(">I", flags))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    assert conn.state is State.ERROR
    conn.receive_data(opt(C.OPT_ABORT))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_bad_option_magic_is_an_error():
    conn = ServerConnection()
    conn.receive_data(client_flags() + b"IHAVEOPX" + bytes(8))
    with pytest.raises(RemoteProtocolError, match="magic"):
        conn.next_event()


def test_abort_acks_and_closes():
    conn = ServerConnection()
    conn.data_to_send()
    events, out = drive(conn, client_flags() + opt(C.OPT_ABORT, b"ignored"))
    assert events == [Closed("abort")]
    assert split_option_replies(out) == [(C.OPT_ABORT, C.REP_ACK, b"")]
    assert conn.next_event() is PAUSED


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_reply(no_zeroes):
    conn = ServerConnection()
    conn.data_to_send()
    cf = C.FLAG_C_FIXED_NEWSTYLE | (C.FLAG_C_NO_ZEROES if no_zeroes else 0)
    events, out = drive(conn, client_flags(cf) + opt(C.OPT_EXPORT_NAME, b"data@s1"), CATALOG)
    assert events == [ExportQuery("data@s1", C.OPT_EXPORT_NAME)]
    size, flags = struct.unpack_from(">QH", out)
    assert size == 1 << 20 and flags & C.TF_READ_ONLY and not flags & C.TF_SEND_TRIM
    assert len(out) == 10 + (0 if no_zeroes else 124)
    assert conn.state is State.TRANSMISSION


def test_export_name_unknown_ends_the_session():
    conn = ServerConnection()
    conn.data_to_send()
    events, out = drive(conn, client_flags() + opt(C.OPT_EXPORT_NAME, b"nope"), CATALOG)
    assert out == b"" and conn.state is State.CLOSED


@pytest.mark.parametrize("data", [
    b"", b"\0\0\0", b"\0\0\0\x09data\0\0", b"\0\0\0\x04data\0", b"\0\0\0\x04data\0\x01",
    b"\0\0\0\x04data\0\0extra", b"\0\0\0\x02\xff\xfe\0\0", b"\0\0\0\x02a\0\0\0"])
def test_malformed_go_is_invalid_and_haggling_continues(data):
    conn = ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(C.OPT_GO, data) + opt(C.OPT_GO, info_data("data")), CATALOG)
    reps = split_option_replies(out)
    assert reps[0][1] == C.REP_ERR_INVALID
    assert reps[-1][1] == C.REP_ACK and conn.state is State.TRANSMISSION


@pytest.mark.parametrize("option,data", [
    (C.OPT_LIST, b"x"), (C.OPT_STRUCTURED_REPLY, b"x"), (C.OPT_STARTTLS, b"x"),
    (C.OPT_SET_META_CONTEXT, meta_data("data", ["nocolon"])),
    (C.OPT_LIST_META_CONTEXT, meta_data("data", ["base:allocation"])[:-2]),
])
def test_invalid_option_data(option, data):
    conn = ServerConnection(tls="on")
    conn.data_to_send()
    pre = opt(C.OPT_STRUCTURED_REPLY) if option != C.OPT_STRUCTURED_REPLY else b""
    _, out = drive(conn, client_flags() + pre + opt(option, data), CATALOG)
    assert split_option_replies(out)[-1][1] == C.REP_ERR_INVALID
    assert conn.state is State.OPTIONS


def test_second_structured_reply_is_invalid():
    conn = ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(C.OPT_STRUCTURED_REPLY) * 2)
    assert [k for _, k, _ in split_option_replies(out)] == [C.REP_ACK, C.REP_ERR_INVALID]


def test_meta_context_needs_structured_replies():
    conn = ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(C.OPT_SET_META_CONTEXT, meta_data("data", ["base:allocation"])))
    assert split_option_replies(out)[0][1] == C.REP_ERR_INVALID


@pytest.mark.parametrize("queries,listing,found", [
    ([], True, True), (["base:"], True, True), (["base:"], False, False),
    (["base:allocation"], False, True), (["qemu:dirty-bitmap:x"], False, False),
    (["base:other"], True, False), ([], False, False)])
def test_meta_context_queries(queries, listing, found):
    assert meta_matches(queries, listing) is found


def test_block_status_needs_meta_for_the_same_export():
    conn = handshake("data@s1", meta="data")
    assert not conn.session.block_status
    _, reps = replies(conn, request(C.CMD_BLOCK_STATUS, 0, 512))
    assert error_of(reps[0]) == C.NBD_EINVAL


def test_oversized_option_is_drained_bytewise():
    conn = ServerConnection()
    conn.data_to_send()
    big = opt(C.OPT_INFO, bytes(MAX_OPTION_DATA + 1)) + opt(77, bytes(MAX_OPTION_DATA + 5))
    events, out = drive(conn, client_flags() + big + opt(C.OPT_GO, info_data("data")), CATALOG)
    kinds = [k for _, k, _ in split_option_replies(out)]
    assert kinds[:2] == [C.REP_ERR_TOO_BIG, C.REP_ERR_UNSUP] and kinds[-1] == C.REP_ACK
    assert conn.state is State.TRANSMISSION


def test_oversized_export_name_is_an_error():
    conn = ServerConnection()
    conn.receive_data(client_flags() + struct.pack(">QII", C.IHAVEOPT, 1, MAX_OPTION_DATA + 1))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("cut", [1, 3, 10, 16, 20])
def test_eof_mid_handshake_is_an_error(cut):
    conn = ServerConnection()
    wire = client_flags() + opt(C.OPT_GO, info_data("data"))
    conn.receive_data(wire[:cut])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="end of file"):
        conn.next_event()


def test_eof_between_options_is_a_plain_close():
    conn = ServerConnection()
    events, _ = drive(conn, client_flags() + opt(C.OPT_STRUCTURED_REPLY))
    conn.receive_data(b"")
    assert conn.next_event() == Closed("eof")


# -- TLS modes ------------------------------------------------------------------

def test_starttls_refused_when_off():
    conn = ServerConnection(tls="off")
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(C.OPT_STARTTLS))
    assert split_option_replies(out)[0][1] == C.REP_ERR_POLICY


def test_require_mode_refuses_everything_but_starttls():
    conn = ServerConnection(tls="require")
    conn.data_to_send()
    wire = client_flags() + opt(C.OPT_LIST) + opt(99) + opt(C.OPT_GO, info_data("data"))
    _, out = drive(conn, wire, CATALOG)
    assert [k for _, k, _ in split_option_replies(out)] == [C.REP_ERR_TLS_REQD] * 3
    conn.receive_data(opt(C.OPT_EXPORT_NAME, b"data"))
    with pytest.raises(RemoteProtocolError, match="TLS"):
        conn.next_event()


def test_starttls_resets_negotiated_state():
    conn = ServerConnection(tls="require")
    conn.data_to_send()
    conn.receive_data(client_flags() + opt(C.OPT_STARTTLS))
    assert conn.next_event() == StartTLS()
    assert split_option_replies(b"".join(conn.data_to_send()))[0][1] == C.REP_ACK
    assert conn.next_event() is PAUSED
    conn.tls_started()
    _, out = drive(conn, opt(C.OPT_STARTTLS) + opt(C.OPT_GO, info_data("data")), CATALOG)
    reps = split_option_replies(out)
    assert reps[0][1] == C.REP_ERR_INVALID and reps[-1][1] == C.REP_ACK
    assert conn.tls_active and not conn.session.structured


def test_data_pipelined_after_starttls_is_an_error():
    conn = ServerConnection(tls="on")
    conn.receive_data(client_flags() + opt(C.OPT_STARTTLS) + b"\x16\x03\x01")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# -- transmission ---------------------------------------------------------------

def test_simple_read_reply_literal():
    conn = handshake(structured=False)
    events, out = drive(conn, request(C.CMD_READ, 512, 4, cookie=0x1122))
    assert events == [Request(C.CMD_READ, 0, 0x1122, 512, 4)]
    conn.send_read(events[0], b"wxyz")
    assert b"".join(conn.data_to_send()) == bytes.fromhex("67446698" "00000000" "0000000000001122") + b"wxyz"


def test_structured_read_reply_literal():
    conn = handshake()
    (req,), _ = drive(conn, request(C.CMD_READ, 512, 4, cookie=5))
    conn.send_read(req, b"wxyz")
    assert b"".join(conn.data_to_send()) == bytes.fromhex(
        "668e33ef" "0001" "0001" "0000000000000005" "0000000c" "0000000000000200") + b"wxyz"


def test_sparse_read_sends_holes():
    conn = handshake()
    (req,), _ = drive(conn, request(C.CMD_READ, 0, 10, cookie=5))
    conn.send_read_sparse(req, [b"ab", 6, b"cd"])
    reps = split_replies(b"".join(bytes(b) for b in conn.data_to_send()))
    assert [r["type"] for r in reps] == [1, 2, 1, 0]
    assert reps[1]["payload"] == struct.pack(">QI", 2, 6)
    assert reps[2]["payload"] == struct.pack(">Q", 8) + b"cd"
    assert [r["flags"] for r in reps] == [0, 0, 0, C.REPLY_FLAG_DONE]


def test_sparse_read_with_df_or_simple_is_one_data_chunk():
    conn = handshake()
    (req,), _ = drive(conn, request(C.CMD_READ, 0, 4, flags=C.CMD_FLAG_DF, cookie=5))
    conn.send_read_sparse(req, [b"a", 2, b"b"])
    (rep,) = split_replies(b"".join(bytes(b) for b in conn.data_to_send()))
    assert rep["payload"][8:] == b"a\0\0b"
    conn = handshake(structured=False)
    (req,), _ = drive(conn, request(C.CMD_READ, 0, 4, cookie=5))
    conn.send_read_sparse(req, [b"a", 2, b"b"])
    (rep,) = split_replies(b"".join(bytes(b) for b in conn.data_to_send()), {5: 4})
    assert rep["data"] == b"a\0\0b"


def test_write_event_carries_the_payload_and_next_request_parses():
    conn = handshake()
    wire = write(4096, b"x" * 1000, cookie=1) + request(C.CMD_FLUSH, cookie=2)
    events, out = drive(conn, wire, bytewise=True)
    assert out == b""
    assert events[0].data == b"x" * 1000 and events[0].offset == 4096
    assert events[1].cmd == C.CMD_FLUSH


def test_rejected_write_is_answered_and_its_payload_drained():
    conn = handshake("data@s1")
    wire = write(0, b"R" * 5000, cookie=1) + request(C.CMD_READ, 0, 8, cookie=2)
    events, reps = replies(conn, wire)
    assert [(r["cookie"], error_of(r)) for r in reps] == [(1, C.NBD_EPERM)]
    assert events == [Request(C.CMD_READ, 0, 2, 0, 8)]


def test_rejected_write_drain_bytewise():
    conn = handshake()
    wire = write((1 << 20) - 10, b"Z" * 3000, cookie=1) + request(C.CMD_READ, 0, 8, cookie=2)
    events, out = drive(conn, wire, bytewise=True)
    assert [error_of(r) for r in split_replies(out)] == [C.NBD_ENOSPC]
    assert [e.cookie for e in events] == [2]


def test_write_too_large_to_drain_ends_the_session():
    conn = handshake()
    conn.receive_data(request(C.CMD_WRITE, 0, MAX_DRAIN + 1))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("name,cmd,flags,offset,length,nbd_err", [
    ("data", 42, 0, 0, 512, C.NBD_EINVAL),
    ("data", C.CMD_READ, 1 << 9, 0, 512, C.NBD_EINVAL),
    ("data", C.CMD_READ, C.CMD_FLAG_NO_HOLE, 0, 512, C.NBD_EINVAL),
    ("data", C.CMD_READ, 0, 1 << 20, 1, C.NBD_EINVAL),
    ("data", C.CMD_READ, 0, (1 << 64) - 1, 1, C.NBD_EINVAL),
    ("data", C.CMD_READ, 0, 0, 0, C.NBD_EINVAL),
    ("data", C.CMD_READ, 0, 0, C.MAX_PAYLOAD + 1, C.NBD_EOVERFLOW),
    ("data", C.CMD_TRIM, 0, (1 << 20) - 1, 2, C.NBD_EINVAL),
    ("data", C.CMD_WRITE_ZEROES, 0, (1 << 20) - 1, 2, C.NBD_ENOSPC),
    ("data", C.CMD_WRITE_ZEROES, C.CMD_FLAG_FAST_ZERO | C.CMD_FLAG_NO_HOLE, 0, 512, C.NBD_ENOTSUP),
    ("data", C.CMD_FLUSH, 0, 0, 512, C.NBD_EINVAL),
    ("data", C.CMD_FLUSH, 0, 512, 0, C.NBD_EINVAL),
    ("data", C.CMD_CACHE, C.CMD_FLAG_DF, 0, 512, C.NBD_EINVAL),
    ("data", C.CMD_BLOCK_STATUS, 0, 0, 512, C.NBD_EINVAL),
    ("data@s1", C.CMD_TRIM, 0, 0, 512, C.NBD_EPERM),
    ("data@s1", C.CMD_WRITE_ZEROES, 0, 0, 512, C.NBD_EPERM),
    ("data@s1", C.CMD_READ, C.CMD_FLAG_FUA, 0, 512, C.NBD_EINVAL),
])
def test_invalid_requests_get_the_right_error(name, cmd, flags, offset, length, nbd_err):
    conn = handshake(name)
    events, reps = replies(conn, request(cmd, offset, length, flags, cookie=9)
                           + request(C.CMD_FLUSH, cookie=10))
    assert [(r["cookie"], error_of(r)) for r in reps] == [(9, nbd_err)]
    assert reps[0]["kind"] == "structured" and reps[0]["flags"] == C.REPLY_FLAG_DONE
    assert [e.cookie for e in events] == [10]


def test_simple_read_error_and_oversized_read_without_structured():
    conn = handshake(structured=False)
    _, reps = replies(conn, request(C.CMD_READ, 0, C.MAX_PAYLOAD + 1, cookie=3))
    assert reps == [dict(kind="simple", error=C.NBD_EINVAL, cookie=3, data=b"")]


@pytest.mark.parametrize("flags", [0, C.CMD_FLAG_FUA, C.CMD_FLAG_REQ_ONE])
def test_valid_flags_pass(flags):
    conn = handshake(meta="data")
    events, reps = replies(conn, request(C.CMD_BLOCK_STATUS, 0, 4096, flags, cookie=1))
    assert reps == [] and events[0].flags == flags


def test_bad_request_magic_is_sticky():
    conn = handshake()
    conn.receive_data(b"\x25\x60\x95\x14" + bytes(24))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError, match="magic"):
            conn.next_event()


def test_eof_mid_request_and_at_boundary():
    conn = handshake()
    conn.receive_data(write(0, b"abc")[:-1])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn = handshake()
    conn.receive_data(b"")
    assert conn.next_event() == Closed("eof")


def test_disc_ignores_what_follows():
    conn = handshake()
    events, out = drive(conn, request(C.CMD_DISC) + b"garbage")
    assert events == [Closed("disc")] and conn.next_event() is PAUSED


def test_block_status_reply():
    conn = handshake(meta="data")
    (req,), _ = drive(conn, request(C.CMD_BLOCK_STATUS, 4096, 65536, cookie=3))
    conn.send_block_status(req, [(0, 8192, 0), (8192, 8192, 0), (16384, 1 << 20, 3)])
    (rep,) = split_replies(b"".join(conn.data_to_send()))
    assert rep["type"] == C.REPLY_TYPE_BLOCK_STATUS and rep["flags"] == C.REPLY_FLAG_DONE
    assert struct.unpack(">5I", rep["payload"]) == (1, 12288, 0, 65536 - 12288, 3)


@pytest.mark.parametrize("extents,flags,expected", [
    ([(0, 100, 3)], 0, [(50, 3)]),
    ([(0, 10, 0), (10, 10, 0), (20, 80, 1)], 0, [(20, 0), (30, 1)]),
    ([(0, 10, 0), (10, 90, 1)], C.CMD_FLAG_REQ_ONE, [(10, 0)]),
    ([(0, 100, 0xff)], C.CMD_FLAG_REQ_ONE, [(50, 3)]),
    ([(0, 10, 1), (20, 80, 1)], 0, [(10, 1)]),
])
def test_block_status_descriptors(extents, flags, expected):
    req = Request(C.CMD_BLOCK_STATUS, flags, 1, 0, 50)
    assert block_status_descriptors(req, extents) == expected


def test_block_status_descriptors_must_cover_the_start():
    with pytest.raises(LocalProtocolError):
        block_status_descriptors(Request(C.CMD_BLOCK_STATUS, 0, 1, 100, 50), [(0, 50, 0)])


def test_simple_error_for_non_reads_and_structured_error_message():
    conn = handshake()
    (req,), _ = drive(conn, write(0, b"a"))
    conn.send_error(req, errno.EROFS, "snapshot")
    (rep,) = split_replies(b"".join(conn.data_to_send()))
    assert rep["payload"] == struct.pack(">IH", C.NBD_EPERM, 8) + b"snapshot"


@pytest.mark.parametrize("posix,nbd", [
    (errno.EPERM, 1), (errno.EROFS, 1), (errno.EIO, 5), (errno.ENOMEM, 12),
    (errno.EINVAL, 22), (errno.ENOSPC, 28), (errno.EDQUOT, 28), (errno.EFBIG, 28),
    (errno.EOVERFLOW, 75), (errno.ENOTSUP, 95), (errno.ESHUTDOWN, 108), (errno.ENOENT, 5)])
def test_errno_mapping(posix, nbd):
    assert C.nbd_error(posix) == nbd


def test_transmission_flags_are_truthful():
    rw = transmission_flags(DATA, structured=False)
    ro = transmission_flags(SNAP, structured=True)
    assert rw & C.TF_SEND_FUA and rw & C.TF_SEND_TRIM and not rw & C.TF_READ_ONLY
    assert not rw & C.TF_SEND_DF and ro & C.TF_SEND_DF
    assert ro & C.TF_READ_ONLY and not ro & (C.TF_SEND_FUA | C.TF_SEND_TRIM | C.TF_SEND_WRITE_ZEROES
                                             | C.TF_SEND_FAST_ZERO)
    single = transmission_flags(ExportInfo("x", 1, multi_conn=False), False)
    assert not single & C.TF_CAN_MULTI_CONN


def test_answering_out_of_turn_is_a_local_error():
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.accept_export(DATA)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    conn.receive_data(client_flags() + opt(C.OPT_LIST))
    assert isinstance(conn.next_event(), ListExports)
    with pytest.raises(LocalProtocolError):
        conn.accept_export(DATA)


def test_read_length_mismatch_is_a_local_error():
    conn = handshake()
    (req,), _ = drive(conn, request(C.CMD_READ, 0, 4))
    with pytest.raises(LocalProtocolError):
        conn.send_read(req, b"abc")


def test_many_requests_in_one_buffer():
    conn = handshake()
    wire = b"".join(request(C.CMD_READ, i * 512, 512, cookie=i) for i in range(1000))
    events, _ = drive(conn, wire)
    assert [e.cookie for e in events] == list(range(1000))
    assert conn.buffered == 0


@pytest.mark.parametrize("offset,blocks,expected", [
    (0, [b"a" * 4, bytes(4), bytes(4), b"b" * 4], [b"a" * 4, 8, b"b" * 4]),
    (0, [bytes(4)], [4]),
    (0, [b"x" * 4], [b"x" * 4]),
    (2, [bytes(2), bytes(4), b"abcd", bytes(3)], [bytes(2), 4, b"abcd" + bytes(3)]),
    (0, [bytes(4), b"\0\0\0\1", bytes(4)], [4, b"\0\0\0\1", 4]),
])
def test_zero_runs(offset, blocks, expected):
    pieces = zero_runs(bytearray(b"".join(blocks)), offset, 4)
    assert [p if isinstance(p, int) else bytes(p) for p in pieces] == expected


# -- streamed writes ------------------------------------------------------------

def streamed(conn, wire):
    """Feed `wire` a byte at a time; returns the events, WriteData as
    (offset, bytes, last) tuples."""
    events = []
    for i in range(len(wire)):
        conn.receive_data(wire[i:i + 1])
        while (ev := conn.next_event()) is not NEED_DATA:
            if isinstance(ev, WriteData):
                ev = (ev.offset, bytes(ev.data), ev.last)
            events.append(ev)
    return events


def test_large_write_streams_in_pieces_ending_on_the_granule():
    conn = handshake()
    conn.stream_writes(8, 4)
    payload = bytes(range(22))
    events = streamed(conn, write(6, payload, cookie=9) + request(C.CMD_FLUSH, cookie=10))
    head, pieces, flush = events[0], events[1:-1], events[-1]
    assert head.streamed and head.data is None and (head.offset, head.length) == (6, 22)
    assert b"".join(p[1] for p in pieces) == payload
    offsets = [p[0] for p in pieces]
    assert offsets == sorted(offsets) and offsets[0] == 6
    assert all((off + len(data)) % 4 == 0 for off, data, _ in pieces[:-1])
    assert [p[2] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert flush.cmd == C.CMD_FLUSH and flush.cookie == 10


def test_write_already_buffered_or_small_is_not_streamed():
    conn = handshake()
    conn.stream_writes(8, 4)
    events, _ = drive(conn, write(0, b"x" * 64) + write(64, b"y" * 4, cookie=2))
    assert [(e.streamed, bytes(e.data)) for e in events] == [(False, b"x" * 64),
                                                              (False, b"y" * 4)]


def test_end_of_file_inside_a_streamed_payload_is_a_violation():
    conn = handshake()
    conn.stream_writes(8, 4)
    wire = write(0, bytes(64))[:28 + 10]
    events = streamed(conn, wire)
    assert events[0].streamed and events[1:] == [(0, bytes(4), False), (4, bytes(4), False)]
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
