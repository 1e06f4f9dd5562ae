"""Byte-level tests of the sans-I/O NBD protocol (nbd_server/protocol.py)."""

import errno
import struct

import pytest

from nbd_server import protocol as P
from nbd_helpers import (GREETING, Catalog, client_flags, drive, error_of, info_data,
                               meta_data, opt, request, split_option_replies, split_replies,
                               write)

DATA = P.ExportInfo("data", 1 << 20, description="a volume")
SNAP = P.ExportInfo("data@s1", 1 << 20, read_only=True)
CATALOG = Catalog(DATA, SNAP)


def handshake(name="data", structured=True, meta=None, tls="off"):
    """A connection in transmission phase on `name`."""
    conn = P.ServerConnection(tls=tls)
    conn.data_to_send()
    data = client_flags()
    if structured:
        data += opt(P.OPT_STRUCTURED_REPLY)
    if meta is not None:
        data += opt(P.OPT_SET_META_CONTEXT, meta_data(meta, ["base:allocation"]))
    data += opt(P.OPT_GO, info_data(name))
    drive(conn, data, CATALOG)
    assert conn.state is P.State.TRANSMISSION
    return conn


def replies(conn, data, read_lengths=None):
    events, out = drive(conn, data)
    return events, split_replies(out, read_lengths)


# -- handshake ----------------------------------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes():
    conn = P.ServerConnection()
    assert b"".join(conn.data_to_send()) == GREETING
    assert conn.next_event() is P.NEED_DATA


def test_go_literal_bytes():
    conn = P.ServerConnection()
    conn.data_to_send()
    wire = bytes.fromhex(
        "00000003"                                   # client flags: fixed, no zeroes
        "49484156454f5054" "00000007" "0000000c"     # IHAVEOPT, GO, 12 bytes
        "00000004" "64617461" "0001" "0001")         # "data", 1 request: NAME
    events, out = drive(conn, wire, CATALOG)
    assert events == [P.ExportQuery("data", P.OPT_GO, (P.INFO_NAME,))]
    flags = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_FUA | P.TF_SEND_TRIM | \
        P.TF_SEND_WRITE_ZEROES | P.TF_CAN_MULTI_CONN | P.TF_SEND_CACHE | P.TF_SEND_FAST_ZERO
    expected = bytes.fromhex(
        "0003e889045565a9" "00000007" "00000003" "0000000c" "0000" "0000000000100000")
    expected += struct.pack(">H", flags)
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000003" "00000006" "0001") + b"data"
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000003" "0000000e" "0003"
                              "00000001" "00001000" "02000000")
    expected += bytes.fromhex("0003e889045565a9" "00000007" "00000001" "00000000")
    assert out == expected
    assert conn.state is P.State.TRANSMISSION


BEFORE_GO = (client_flags() + opt(P.OPT_LIST) + opt(99, b"junk") + opt(P.OPT_STRUCTURED_REPLY)
          + opt(P.OPT_LIST_META_CONTEXT, meta_data("data", []))
          + opt(P.OPT_SET_META_CONTEXT, meta_data("data", ["base:allocation", "x-other:thing"]))
          + opt(P.OPT_INFO, info_data("nope")) + opt(P.OPT_INFO, info_data("data@s1", [2])))
SCRIPT = (BEFORE_GO + opt(P.OPT_GO, info_data("data", [P.INFO_BLOCK_SIZE]))
          + request(P.CMD_WRITE, 0, 3, cookie=7, data=b"abc")
          + request(P.CMD_READ, 0, 3, cookie=8) + request(P.CMD_BLOCK_STATUS, 0, 4096, cookie=9)
          + request(P.CMD_DISC))


def test_bytewise_feeding_gives_the_same_events_and_bytes():
    whole = drive(P.ServerConnection(), SCRIPT, CATALOG)
    bytewise = drive(P.ServerConnection(), SCRIPT, CATALOG, bytewise=True)
    assert whole == bytewise
    events = whole[0]
    assert [type(e).__name__ for e in events] == [
        "ListExports", "ExportQuery", "ExportQuery", "ExportQuery",
        "Request", "Request", "Request", "Closed"]
    assert events[4].data == b"abc" and events[4].cookie == 7
    assert events[-1] == P.Closed("disc")


def test_option_replies_of_the_script():
    conn = P.ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, BEFORE_GO, CATALOG)
    reps = split_option_replies(out)
    kinds = [(o, k) for o, k, _ in reps]
    assert kinds[:3] == [(P.OPT_LIST, P.REP_SERVER)] * 2 + [(P.OPT_LIST, P.REP_ACK)]
    assert reps[0][2] == b"\0\0\0\x04data" + b"a volume"
    assert kinds[3] == (99, P.REP_ERR_UNSUP)
    assert kinds[4] == (P.OPT_STRUCTURED_REPLY, P.REP_ACK)
    assert kinds[5:7] == [(P.OPT_LIST_META_CONTEXT, P.REP_META_CONTEXT), (P.OPT_LIST_META_CONTEXT, P.REP_ACK)]
    assert reps[7] == (P.OPT_SET_META_CONTEXT, P.REP_META_CONTEXT, b"\0\0\0\x01base:allocation")
    assert kinds[8] == (P.OPT_SET_META_CONTEXT, P.REP_ACK)
    assert reps[9][:2] == (P.OPT_INFO, P.REP_ERR_UNKNOWN) and b"nope" in reps[9][2]
    info = reps[10][2]
    assert reps[10][1] == P.REP_INFO and struct.unpack(">HQH", info)[2] & P.TF_READ_ONLY
    assert kinds[-1] == (P.OPT_INFO, P.REP_ACK)
    assert conn.state is P.State.OPTIONS


def test_script_negotiates_block_status():
    conn = P.ServerConnection()
    events, out = drive(conn, SCRIPT, CATALOG)
    assert conn.session.block_status and conn.session.structured


@pytest.mark.parametrize("flags", [4, 0x80000000, 0xffffffff])
def test_unknown_client_flags_are_a_sticky_error(flags):
    conn = P.ServerConnection()
    conn.receive_data(struct.pack(">I", flags))
    for _ in range(2):
        with pytest.raises(P.RemoteProtocolError):
            conn.next_event()
    assert conn.state is P.State.ERROR
    conn.receive_data(opt(P.OPT_ABORT))
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()


def test_bad_option_magic_is_an_error():
    conn = P.ServerConnection()
    conn.receive_data(client_flags() + b"IHAVEOPX" + bytes(8))
    with pytest.raises(P.RemoteProtocolError, match="magic"):
        conn.next_event()


def test_abort_acks_and_closes():
    conn = P.ServerConnection()
    conn.data_to_send()
    events, out = drive(conn, client_flags() + opt(P.OPT_ABORT, b"ignored"))
    assert events == [P.Closed("abort")]
    assert split_option_replies(out) == [(P.OPT_ABORT, P.REP_ACK, b"")]
    assert conn.next_event() is P.PAUSED


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_reply(no_zeroes):
    conn = P.ServerConnection()
    conn.data_to_send()
    cf = P.FLAG_C_FIXED_NEWSTYLE | (P.FLAG_C_NO_ZEROES if no_zeroes else 0)
    events, out = drive(conn, client_flags(cf) + opt(P.OPT_EXPORT_NAME, b"data@s1"), CATALOG)
    assert events == [P.ExportQuery("data@s1", P.OPT_EXPORT_NAME)]
    size, flags = struct.unpack_from(">QH", out)
    assert size == 1 << 20 and flags & P.TF_READ_ONLY and not flags & P.TF_SEND_TRIM
    assert len(out) == 10 + (0 if no_zeroes else 124)
    assert conn.state is P.State.TRANSMISSION


def test_export_name_unknown_ends_the_session():
    conn = P.ServerConnection()
    conn.data_to_send()
    events, out = drive(conn, client_flags() + opt(P.OPT_EXPORT_NAME, b"nope"), CATALOG)
    assert out == b"" and conn.state is P.State.CLOSED


@pytest.mark.parametrize("data", [
    b"", b"\0\0\0", b"\0\0\0\x09data\0\0", b"\0\0\0\x04data\0", b"\0\0\0\x04data\0\x01",
    b"\0\0\0\x04data\0\0extra", b"\0\0\0\x02\xff\xfe\0\0", b"\0\0\0\x02a\0\0\0"])
def test_malformed_go_is_invalid_and_haggling_continues(data):
    conn = P.ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(P.OPT_GO, data) + opt(P.OPT_GO, info_data("data")), CATALOG)
    reps = split_option_replies(out)
    assert reps[0][1] == P.REP_ERR_INVALID
    assert reps[-1][1] == P.REP_ACK and conn.state is P.State.TRANSMISSION


@pytest.mark.parametrize("option,data", [
    (P.OPT_LIST, b"x"), (P.OPT_STRUCTURED_REPLY, b"x"), (P.OPT_STARTTLS, b"x"),
    (P.OPT_SET_META_CONTEXT, meta_data("data", ["nocolon"])),
    (P.OPT_LIST_META_CONTEXT, meta_data("data", ["base:allocation"])[:-2]),
])
def test_invalid_option_data(option, data):
    conn = P.ServerConnection(tls="on")
    conn.data_to_send()
    pre = opt(P.OPT_STRUCTURED_REPLY) if option != P.OPT_STRUCTURED_REPLY else b""
    _, out = drive(conn, client_flags() + pre + opt(option, data), CATALOG)
    assert split_option_replies(out)[-1][1] == P.REP_ERR_INVALID
    assert conn.state is P.State.OPTIONS


def test_second_structured_reply_is_invalid():
    conn = P.ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(P.OPT_STRUCTURED_REPLY) * 2)
    assert [k for _, k, _ in split_option_replies(out)] == [P.REP_ACK, P.REP_ERR_INVALID]


def test_meta_context_needs_structured_replies():
    conn = P.ServerConnection()
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(P.OPT_SET_META_CONTEXT, meta_data("data", ["base:allocation"])))
    assert split_option_replies(out)[0][1] == P.REP_ERR_INVALID


@pytest.mark.parametrize("queries,listing,found", [
    ([], True, True), (["base:"], True, True), (["base:"], False, False),
    (["base:allocation"], False, True), (["qemu:dirty-bitmap:x"], False, False),
    (["base:other"], True, False), ([], False, False)])
def test_meta_context_queries(queries, listing, found):
    assert P.meta_matches(queries, listing) is found


def test_block_status_needs_meta_for_the_same_export():
    conn = handshake("data@s1", meta="data")
    assert not conn.session.block_status
    _, reps = replies(conn, request(P.CMD_BLOCK_STATUS, 0, 512))
    assert error_of(reps[0]) == P.NBD_EINVAL


def test_oversized_option_is_drained_bytewise():
    conn = P.ServerConnection()
    conn.data_to_send()
    big = opt(P.OPT_INFO, bytes(P.MAX_OPTION_DATA + 1)) + opt(77, bytes(P.MAX_OPTION_DATA + 5))
    events, out = drive(conn, client_flags() + big + opt(P.OPT_GO, info_data("data")), CATALOG)
    kinds = [k for _, k, _ in split_option_replies(out)]
    assert kinds[:2] == [P.REP_ERR_TOO_BIG, P.REP_ERR_UNSUP] and kinds[-1] == P.REP_ACK
    assert conn.state is P.State.TRANSMISSION


def test_oversized_export_name_is_an_error():
    conn = P.ServerConnection()
    conn.receive_data(client_flags() + struct.pack(">QII", P.IHAVEOPT, 1, P.MAX_OPTION_DATA + 1))
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("cut", [1, 3, 10, 16, 20])
def test_eof_mid_handshake_is_an_error(cut):
    conn = P.ServerConnection()
    wire = client_flags() + opt(P.OPT_GO, info_data("data"))
    conn.receive_data(wire[:cut])
    conn.receive_data(b"")
    with pytest.raises(P.RemoteProtocolError, match="end of file"):
        conn.next_event()


def test_eof_between_options_is_a_plain_close():
    conn = P.ServerConnection()
    events, _ = drive(conn, client_flags() + opt(P.OPT_STRUCTURED_REPLY))
    conn.receive_data(b"")
    assert conn.next_event() == P.Closed("eof")


# -- TLS modes ------------------------------------------------------------------

def test_starttls_refused_when_off():
    conn = P.ServerConnection(tls="off")
    conn.data_to_send()
    _, out = drive(conn, client_flags() + opt(P.OPT_STARTTLS))
    assert split_option_replies(out)[0][1] == P.REP_ERR_POLICY


def test_require_mode_refuses_everything_but_starttls():
    conn = P.ServerConnection(tls="require")
    conn.data_to_send()
    wire = client_flags() + opt(P.OPT_LIST) + opt(99) + opt(P.OPT_GO, info_data("data"))
    _, out = drive(conn, wire, CATALOG)
    assert [k for _, k, _ in split_option_replies(out)] == [P.REP_ERR_TLS_REQD] * 3
    conn.receive_data(opt(P.OPT_EXPORT_NAME, b"data"))
    with pytest.raises(P.RemoteProtocolError, match="TLS"):
        conn.next_event()


def test_starttls_resets_negotiated_state():
    conn = P.ServerConnection(tls="require")
    conn.data_to_send()
    conn.receive_data(client_flags() + opt(P.OPT_STARTTLS))
    assert conn.next_event() == P.StartTLS()
    assert split_option_replies(b"".join(conn.data_to_send()))[0][1] == P.REP_ACK
    assert conn.next_event() is P.PAUSED
    conn.tls_started()
    _, out = drive(conn, opt(P.OPT_STARTTLS) + opt(P.OPT_GO, info_data("data")), CATALOG)
    reps = split_option_replies(out)
    assert reps[0][1] == P.REP_ERR_INVALID and reps[-1][1] == P.REP_ACK
    assert conn.tls_active and not conn.session.structured


def test_data_pipelined_after_starttls_is_an_error():
    conn = P.ServerConnection(tls="on")
    conn.receive_data(client_flags() + opt(P.OPT_STARTTLS) + b"\x16\x03\x01")
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()


# -- transmission ---------------------------------------------------------------

def test_simple_read_reply_literal():
    conn = handshake(structured=False)
    events, out = drive(conn, request(P.CMD_READ, 512, 4, cookie=0x1122))
    assert events == [P.Request(P.CMD_READ, 0, 0x1122, 512, 4)]
    conn.send_read(events[0], b"wxyz")
    assert b"".join(conn.data_to_send()) == bytes.fromhex("67446698" "00000000" "0000000000001122") + b"wxyz"


def test_structured_read_reply_literal():
    conn = handshake()
    (req,), _ = drive(conn, request(P.CMD_READ, 512, 4, cookie=5))
    conn.send_read(req, b"wxyz")
    assert b"".join(conn.data_to_send()) == bytes.fromhex(
        "668e33ef" "0001" "0001" "0000000000000005" "0000000c" "0000000000000200") + b"wxyz"


def test_sparse_read_sends_holes():
    conn = handshake()
    (req,), _ = drive(conn, request(P.CMD_READ, 0, 10, cookie=5))
    conn.send_read_sparse(req, [b"ab", 6, b"cd"])
    reps = split_replies(b"".join(bytes(b) for b in conn.data_to_send()))
    assert [r["type"] for r in reps] == [1, 2, 1, 0]
    assert reps[1]["payload"] == struct.pack(">QI", 2, 6)
    assert reps[2]["payload"] == struct.pack(">Q", 8) + b"cd"
    assert [r["flags"] for r in reps] == [0, 0, 0, P.REPLY_FLAG_DONE]


def test_sparse_read_with_df_or_simple_is_one_data_chunk():
    conn = handshake()
    (req,), _ = drive(conn, request(P.CMD_READ, 0, 4, flags=P.CMD_FLAG_DF, cookie=5))
    conn.send_read_sparse(req, [b"a", 2, b"b"])
    (rep,) = split_replies(b"".join(bytes(b) for b in conn.data_to_send()))
    assert rep["payload"][8:] == b"a\0\0b"
    conn = handshake(structured=False)
    (req,), _ = drive(conn, request(P.CMD_READ, 0, 4, cookie=5))
    conn.send_read_sparse(req, [b"a", 2, b"b"])
    (rep,) = split_replies(b"".join(bytes(b) for b in conn.data_to_send()), {5: 4})
    assert rep["data"] == b"a\0\0b"


def test_write_event_carries_the_payload_and_next_request_parses():
    conn = handshake()
    wire = write(4096, b"x" * 1000, cookie=1) + request(P.CMD_FLUSH, cookie=2)
    events, out = drive(conn, wire, bytewise=True)
    assert out == b""
    assert events[0].data == b"x" * 1000 and events[0].offset == 4096
    assert events[1].cmd == P.CMD_FLUSH


def test_rejected_write_is_answered_and_its_payload_drained():
    conn = handshake("data@s1")
    wire = write(0, b"R" * 5000, cookie=1) + request(P.CMD_READ, 0, 8, cookie=2)
    events, reps = replies(conn, wire)
    assert [(r["cookie"], error_of(r)) for r in reps] == [(1, P.NBD_EPERM)]
    assert events == [P.Request(P.CMD_READ, 0, 2, 0, 8)]


def test_rejected_write_drain_bytewise():
    conn = handshake()
    wire = write((1 << 20) - 10, b"Z" * 3000, cookie=1) + request(P.CMD_READ, 0, 8, cookie=2)
    events, out = drive(conn, wire, bytewise=True)
    assert [error_of(r) for r in split_replies(out)] == [P.NBD_ENOSPC]
    assert [e.cookie for e in events] == [2]


def test_write_too_large_to_drain_ends_the_session():
    conn = handshake()
    conn.receive_data(request(P.CMD_WRITE, 0, P.MAX_DRAIN + 1))
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("name,cmd,flags,offset,length,nbd_err", [
    ("data", 42, 0, 0, 512, P.NBD_EINVAL),
    ("data", P.CMD_READ, 1 << 9, 0, 512, P.NBD_EINVAL),
    ("data", P.CMD_READ, P.CMD_FLAG_NO_HOLE, 0, 512, P.NBD_EINVAL),
    ("data", P.CMD_READ, 0, 1 << 20, 1, P.NBD_EINVAL),
    ("data", P.CMD_READ, 0, (1 << 64) - 1, 1, P.NBD_EINVAL),
    ("data", P.CMD_READ, 0, 0, 0, P.NBD_EINVAL),
    ("data", P.CMD_READ, 0, 0, P.MAX_PAYLOAD + 1, P.NBD_EOVERFLOW),
    ("data", P.CMD_TRIM, 0, (1 << 20) - 1, 2, P.NBD_EINVAL),
    ("data", P.CMD_WRITE_ZEROES, 0, (1 << 20) - 1, 2, P.NBD_ENOSPC),
    ("data", P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO | P.CMD_FLAG_NO_HOLE, 0, 512, P.NBD_ENOTSUP),
    ("data", P.CMD_FLUSH, 0, 0, 512, P.NBD_EINVAL),
    ("data", P.CMD_FLUSH, 0, 512, 0, P.NBD_EINVAL),
    ("data", P.CMD_CACHE, P.CMD_FLAG_DF, 0, 512, P.NBD_EINVAL),
    ("data", P.CMD_BLOCK_STATUS, 0, 0, 512, P.NBD_EINVAL),
    ("data@s1", P.CMD_TRIM, 0, 0, 512, P.NBD_EPERM),
    ("data@s1", P.CMD_WRITE_ZEROES, 0, 0, 512, P.NBD_EPERM),
    ("data@s1", P.CMD_READ, P.CMD_FLAG_FUA, 0, 512, P.NBD_EINVAL),
])
def test_invalid_requests_get_the_right_error(name, cmd, flags, offset, length, nbd_err):
    conn = handshake(name)
    events, reps = replies(conn, request(cmd, offset, length, flags, cookie=9)
                           + request(P.CMD_FLUSH, cookie=10))
    assert [(r["cookie"], error_of(r)) for r in reps] == [(9, nbd_err)]
    assert reps[0]["kind"] == "structured" and reps[0]["flags"] == P.REPLY_FLAG_DONE
    assert [e.cookie for e in events] == [10]


def test_simple_read_error_and_oversized_read_without_structured():
    conn = handshake(structured=False)
    _, reps = replies(conn, request(P.CMD_READ, 0, P.MAX_PAYLOAD + 1, cookie=3))
    assert reps == [dict(kind="simple", error=P.NBD_EINVAL, cookie=3, data=b"")]


@pytest.mark.parametrize("flags", [0, P.CMD_FLAG_FUA, P.CMD_FLAG_REQ_ONE])
def test_valid_flags_pass(flags):
    conn = handshake(meta="data")
    events, reps = replies(conn, request(P.CMD_BLOCK_STATUS, 0, 4096, flags, cookie=1))
    assert reps == [] and events[0].flags == flags


def test_bad_request_magic_is_sticky():
    conn = handshake()
    conn.receive_data(b"\x25\x60\x95\x14" + bytes(24))
    for _ in range(2):
        with pytest.raises(P.RemoteProtocolError, match="magic"):
            conn.next_event()


def test_eof_mid_request_and_at_boundary():
    conn = handshake()
    conn.receive_data(write(0, b"abc")[:-1])
    assert conn.next_event() is P.NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()
    conn = handshake()
    conn.receive_data(b"")
    assert conn.next_event() == P.Closed("eof")


def test_disc_ignores_what_follows():
    conn = handshake()
    events, out = drive(conn, request(P.CMD_DISC) + b"garbage")
    assert events == [P.Closed("disc")] and conn.next_event() is P.PAUSED


def test_block_status_reply():
    conn = handshake(meta="data")
    (req,), _ = drive(conn, request(P.CMD_BLOCK_STATUS, 4096, 65536, cookie=3))
    conn.send_block_status(req, [(0, 8192, 0), (8192, 8192, 0), (16384, 1 << 20, 3)])
    (rep,) = split_replies(b"".join(conn.data_to_send()))
    assert rep["type"] == P.REPLY_TYPE_BLOCK_STATUS and rep["flags"] == P.REPLY_FLAG_DONE
    assert struct.unpack(">5I", rep["payload"]) == (1, 12288, 0, 65536 - 12288, 3)


@pytest.mark.parametrize("extents,flags,expected", [
    ([(0, 100, 3)], 0, [(50, 3)]),
    ([(0, 10, 0), (10, 10, 0), (20, 80, 1)], 0, [(20, 0), (30, 1)]),
    ([(0, 10, 0), (10, 90, 1)], P.CMD_FLAG_REQ_ONE, [(10, 0)]),
    ([(0, 100, 0xff)], P.CMD_FLAG_REQ_ONE, [(50, 3)]),
    ([(0, 10, 1), (20, 80, 1)], 0, [(10, 1)]),
])
def test_block_status_descriptors(extents, flags, expected):
    req = P.Request(P.CMD_BLOCK_STATUS, flags, 1, 0, 50)
    assert P.block_status_descriptors(req, extents) == expected


def test_block_status_descriptors_must_cover_the_start():
    with pytest.raises(P.LocalProtocolError):
        P.block_status_descriptors(P.Request(P.CMD_BLOCK_STATUS, 0, 1, 100, 50), [(0, 50, 0)])


def test_simple_error_for_non_reads_and_structured_error_message():
    conn = handshake()
    (req,), _ = drive(conn, write(0, b"a"))
    conn.send_error(req, errno.EROFS, "snapshot")
    (rep,) = split_replies(b"".join(conn.data_to_send()))
    assert rep["payload"] == struct.pack(">IH", P.NBD_EPERM, 8) + b"snapshot"


@pytest.mark.parametrize("posix,nbd", [
    (errno.EPERM, 1), (errno.EROFS, 1), (errno.EIO, 5), (errno.ENOMEM, 12),
    (errno.EINVAL, 22), (errno.ENOSPC, 28), (errno.EDQUOT, 28), (errno.EFBIG, 28),
    (errno.EOVERFLOW, 75), (errno.ENOTSUP, 95), (errno.ESHUTDOWN, 108), (errno.ENOENT, 5)])
def test_errno_mapping(posix, nbd):
    assert P.nbd_error(posix) == nbd


def test_transmission_flags_are_truthful():
    rw = P.transmission_flags(DATA, structured=False)
    ro = P.transmission_flags(SNAP, structured=True)
    assert rw & P.TF_SEND_FUA and rw & P.TF_SEND_TRIM and not rw & P.TF_READ_ONLY
    assert not rw & P.TF_SEND_DF and ro & P.TF_SEND_DF
    assert ro & P.TF_READ_ONLY and not ro & (P.TF_SEND_FUA | P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES
                                             | P.TF_SEND_FAST_ZERO)
    single = P.transmission_flags(P.ExportInfo("x", 1, multi_conn=False), False)
    assert not single & P.TF_CAN_MULTI_CONN


def test_answering_out_of_turn_is_a_local_error():
    conn = P.ServerConnection()
    with pytest.raises(P.LocalProtocolError):
        conn.accept_export(DATA)
    with pytest.raises(P.LocalProtocolError):
        conn.tls_started()
    conn.receive_data(client_flags() + opt(P.OPT_LIST))
    assert isinstance(conn.next_event(), P.ListExports)
    with pytest.raises(P.LocalProtocolError):
        conn.accept_export(DATA)


def test_read_length_mismatch_is_a_local_error():
    conn = handshake()
    (req,), _ = drive(conn, request(P.CMD_READ, 0, 4))
    with pytest.raises(P.LocalProtocolError):
        conn.send_read(req, b"abc")


def test_many_requests_in_one_buffer():
    conn = handshake()
    wire = b"".join(request(P.CMD_READ, i * 512, 512, cookie=i) for i in range(1000))
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
    pieces = P.zero_runs(bytearray(b"".join(blocks)), offset, 4)
    assert [p if isinstance(p, int) else bytes(p) for p in pieces] == expected


# -- streamed writes ------------------------------------------------------------

def streamed(conn, wire):
    """Feed `wire` a byte at a time; returns the events, WriteData as
    (offset, bytes, last) tuples."""
    events = []
    for i in range(len(wire)):
        conn.receive_data(wire[i:i + 1])
        while (ev := conn.next_event()) is not P.NEED_DATA:
            if isinstance(ev, P.WriteData):
                ev = (ev.offset, bytes(ev.data), ev.last)
            events.append(ev)
    return events


def test_large_write_streams_in_pieces_ending_on_the_granule():
    conn = handshake()
    conn.stream_writes(8, 4)
    payload = bytes(range(22))
    events = streamed(conn, write(6, payload, cookie=9) + request(P.CMD_FLUSH, cookie=10))
    head, pieces, flush = events[0], events[1:-1], events[-1]
    assert head.streamed and head.data is None and (head.offset, head.length) == (6, 22)
    assert b"".join(p[1] for p in pieces) == payload
    offsets = [p[0] for p in pieces]
    assert offsets == sorted(offsets) and offsets[0] == 6
    assert all((off + len(data)) % 4 == 0 for off, data, _ in pieces[:-1])
    assert [p[2] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert flush.cmd == P.CMD_FLUSH and flush.cookie == 10


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
    with pytest.raises(P.RemoteProtocolError):
        conn.next_event()
