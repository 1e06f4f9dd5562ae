"""TLS over NBD: x509 certificates made with openssl, libnbd clients
(nbdinfo, nbdsh), FORCEDTLS (`--tls=require`) refusing plaintext, and
optional client-certificate verification (`--tls-ca`)."""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys

import pytest

from nbd_helpers import (GREETING, REPO, ServerProcess, client_flags, info_data, nbdsh, opt,
                         pool_with_volumes, recv_exact, run)
from nbd_server import constants as C

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for localhost, a client certificate, and
    two libnbd certificate directories: with and without the client pair."""
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem",
            "-out", "ca-cert.pem", "-days", "2", "-subj", "/CN=rokfs test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca-cert.pem", "-CAkey",
                "ca-key.pem", "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2",
                "-extfile", f"{name}.ext", cwd=d)
    with_client = d / "with-client"
    anonymous = d / "anonymous"
    for sub, files in ((with_client, ("ca-cert.pem", "client-cert.pem", "client-key.pem")),
                       (anonymous, ("ca-cert.pem",))):
        sub.mkdir()
        for f in files:
            shutil.copy(d / f, sub / f)
    return d


def read_option_reply(s):
    _, option, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
    return option, kind, recv_exact(s, length)


def nbdsh_tls(uri, script):
    """nbdsh allows certificate paths in a URI only when told to."""
    return nbdsh(None, f"h.set_uri_allow_local_file(True)\nh.connect_uri({str(uri)!r})\n"
                 + script)


def tls_server(tmp_path, certs, mode, verify_clients=False):
    pool_with_volumes(str(tmp_path / "pool"), [("sec", 4 << 20)])
    extra = ["--tls", mode, "--tls-cert", str(certs / "server-cert.pem"),
             "--tls-key", str(certs / "server-key.pem")]
    if verify_clients:
        extra += ["--tls-ca", str(certs / "ca-cert.pem")]
    return ServerProcess(tmp_path / "pool", tmp_path / "tls.sock", extra)


def test_require_serves_tls_clients_and_refuses_plaintext(tmp_path, certs):
    with tls_server(tmp_path, certs, "require") as srv:
        tls_uri = srv.uri("sec", certs / "anonymous")
        out = run(["nbdinfo", tls_uri]).stdout
        assert "with TLS" in out and "export-size: 4194304" in out
        nbdsh_tls(tls_uri, "h.pwrite(b'secret' * 100, 4096)\nh.flush()\n"
                           "assert h.pread(600, 4096) == b'secret' * 100\n")
        for args in ([srv.uri("sec")], ["--list", srv.uri("")]):
            res = run(["nbdinfo", *args], check=False)
            assert res.returncode != 0, res.stdout
            assert "secret" not in res.stdout
        listed = run(["nbdinfo", "--list", "--json", srv.uri("", certs / "anonymous")]).stdout
        assert '"sec"' in listed


def test_require_refuses_plaintext_at_the_byte_level(tmp_path, certs):
    with tls_server(tmp_path, certs, "require") as srv, socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(srv.sock))
        assert recv_exact(s, 18) == GREETING
        s.sendall(client_flags() + opt(C.OPT_GO, info_data("sec")) + opt(C.OPT_LIST))
        replies = [read_option_reply(s) for _ in range(2)]
        assert [(o, k) for o, k, _ in replies] == [(C.OPT_GO, C.REP_ERR_TLS_REQD),
                                                   (C.OPT_LIST, C.REP_ERR_TLS_REQD)]
        s.sendall(opt(C.OPT_EXPORT_NAME, b"sec"))
        assert s.recv(100) == b""          # EXPORT_NAME cannot be refused: hard disconnect


def test_bulk_copy_over_tls(tmp_path, certs):
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(3 << 20) + bytes(1 << 20))
    with tls_server(tmp_path, certs, "require") as srv:
        uri = srv.uri("sec", certs / "anonymous")
        run(["nbdcopy", "--flush", str(src), uri])
        run(["nbdcopy", uri, str(tmp_path / "back.raw")])
    assert (tmp_path / "back.raw").read_bytes() == src.read_bytes()


def test_tls_on_lets_the_client_choose(tmp_path, certs):
    with tls_server(tmp_path, certs, "on") as srv:
        assert "with TLS" in run(["nbdinfo", srv.uri("sec", certs / "anonymous")]).stdout
        assert "without TLS" in run(["nbdinfo", srv.uri("sec")]).stdout


def test_client_certificates_verified_with_tls_ca(tmp_path, certs):
    with tls_server(tmp_path, certs, "require", verify_clients=True) as srv:
        nbdsh_tls(srv.uri("sec", certs / "with-client"), "h.pwrite(b'ok', 0)\nh.flush()\n"
                                                         "assert h.get_tls_negotiated()\n")
        res = run(["nbdinfo", srv.uri("sec", certs / "anonymous")], check=False)
        assert res.returncode != 0
        assert srv.alive()
        assert "with TLS" in run(["nbdinfo", srv.uri("sec", certs / "with-client")]).stdout


def test_python_ssl_client_after_starttls(tmp_path, certs):
    """STARTTLS by hand: negotiated state is reset, haggling goes on over TLS."""
    with tls_server(tmp_path, certs, "require") as srv, socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(srv.sock))
        assert recv_exact(raw, 18) == GREETING
        raw.sendall(client_flags() + opt(C.OPT_STARTTLS))
        assert read_option_reply(raw)[:2] == (C.OPT_STARTTLS, C.REP_ACK)
        ctx = ssl.create_default_context(cafile=str(certs / "ca-cert.pem"))
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(opt(C.OPT_STARTTLS) + opt(C.OPT_GO, info_data("sec")))
            assert read_option_reply(s)[1] == C.REP_ERR_INVALID    # TLS already active
            option, kind, data = read_option_reply(s)
            assert (option, kind) == (C.OPT_GO, C.REP_INFO)
            assert struct.unpack_from(">HQ", data) == (C.INFO_EXPORT, 4 << 20)


def test_tls_options_are_checked_before_serving(tmp_path):
    pool_with_volumes(str(tmp_path / "pool"), [("sec", 1 << 20)])
    base = [sys.executable, "-m", "rokfs.cli", "nbd", "--pool", str(tmp_path / "pool"),
            "--socket", str(tmp_path / "x.sock")]
    res = run(base + ["--tls", "require"], check=False, cwd=REPO)
    assert res.returncode == 2 and "needs --tls-cert and --tls-key" in res.stderr
    res = run(base + ["--tls", "on", "--tls-cert", str(tmp_path / "none.pem"),
                      "--tls-key", str(tmp_path / "none.pem")], check=False, cwd=REPO)
    assert res.returncode == 2 and "No such file" in res.stderr
    assert not (tmp_path / "x.sock").exists()
