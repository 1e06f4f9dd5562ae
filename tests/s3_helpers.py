"""A real S3-compatible server over HTTP for tests (moto's server mode),
and a flaky TCP proxy to put in front of it."""

import collections
import contextlib
import os
import random
import socket
import threading
import time

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@contextlib.contextmanager
def refused_port():
    """A loopback port where every connection is refused while this holds
    it: bound, never listening, so nothing else (another pytest-xdist
    worker's server, say) can start listening on it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class S3Server:
    """moto's S3 server on a loopback port (one the kernel picks at the
    first start: no window for another process to take it); stop() closes
    the listener (the stored objects survive, like a real S3 service
    restarting) and start() listens on the same port again."""

    def __init__(self):
        self.port = None
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        from moto.server import ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port or 0,
                                         verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self):
        if self.server:
            self.server.stop()
            self.server = None


def _swallow(sock):
    """Read and drop what `sock` sends until it closes."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


class FlakyProxy:
    """Forward TCP to a target; drop (close) or delay a share of requests;
    `hold` stops requests at the proxy until `release`, so a test catches a
    transfer mid-way whatever the machine's speed; `fail` makes chosen
    requests fail as S3 or the network would. `seen` counts the requests
    that arrived, by operation (put, get, list, head, delete)."""

    def __init__(self, target_port, drop=0.0, delay=0.0, delay_share=0.0, seed=1):
        self.target_port = target_port
        self.stall = ()        # request paths containing one of these are never answered
        self.drop, self.delay, self.delay_share = drop, delay, delay_share
        self.gate = None       # the Gate of `hold`, until `release`
        self.faults = []       # [part, times left, how] of `fail`
        self.seen = collections.Counter()
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.dropped = self.delayed = 0
        self.sockets = set()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        self.sockets |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        fresh = True
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                break
            if not data:
                break
            if fresh and self._intercept(client, data.split(b"\r\n", 1)[0]):
                break
            fresh = False
            try:
                upstream.sendall(data)
            except OSError:
                break
            fresh = data.endswith(b"\r\n\r\n") or len(data) < 65536
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _intercept(self, client, line):
        """At what may start a request (its first line): count it, then
        True if its connection is to be cut instead of forwarded (stalled,
        held then released, failed or dropped)."""
        if b" HTTP/1." in line:
            with self.lock:
                self.seen[_operation(line)] += 1
        if any(part.encode() in line for part in self.stall):
            self.delayed += 1
            _swallow(client)               # answer nothing, ever
            return True
        if not self._pass_gate(line) or self._fail(client, line):
            return True                    # its client tries again
        r = self.random.random()
        if r < self.drop:
            self.dropped += 1
            return True
        if r < self.drop + self.delay_share:
            self.delayed += 1
            time.sleep(self.delay)
        return False

    def fail(self, part, times=1, how="503"):
        """The next `times` requests whose request line contains `part` fail
        at the proxy, never reaching the server: `how` "503" answers S3's
        503 SlowDown, "close" closes the connection unanswered."""
        with self.lock:
            self.faults.append([part.encode(), times, how])

    def _fail(self, client, line):
        if b" HTTP/1." not in line:
            return False
        with self.lock:
            fault = next((f for f in self.faults if f[0] in line and f[1] > 0), None)
            if fault is None:
                return False
            fault[1] -= 1
        if fault[2] == "503":
            try:
                client.sendall(SLOW_DOWN)
            except OSError:
                pass
        return True

    def hold(self, part, after=0):
        """From now on, of the requests whose request line contains `part`,
        let `after` through; stop every later one at the proxy (nothing of
        it reaches the server) until `release`."""
        self.gate = Gate(part, after)

    def release(self):
        """Open the gate: every held request's connection is cut unanswered
        (its client, if still waiting, tries again and gets through; one
        that gave up meanwhile lands nothing late), later ones pass."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.opened.set()

    def _pass_gate(self, line):
        """False if the request starting with `line` was held (and is now to be cut)."""
        gate = self.gate
        if gate is None or not gate.holds(line):
            return True
        gate.opened.wait()
        return False

    def _pump(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except OSError:
                break
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        """Stop listening and cut every open connection."""
        self.release()
        self.running = False
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        for s in list(self.sockets):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _operation(request_line):
    method, target = request_line.split(b" ")[:2]
    if method == b"GET" and b"list-type=" in target:
        return "list"
    return method.decode().lower()


_SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                   b'<Message>Please reduce your request rate.</Message></Error>')
SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_SLOW_DOWN_BODY)
             + _SLOW_DOWN_BODY)


class Gate:
    """Requests whose request line (an HTTP one) contains `part`: the first
    `after` pass, later ones wait for `opened`; `passed` and `held` count them."""

    def __init__(self, part, after):
        self.part, self.after = part.encode(), after
        self.passed = self.held = 0
        self.opened = threading.Event()
        self.lock = threading.Lock()

    def holds(self, request_line):
        if b" HTTP/1." not in request_line or self.part not in request_line:
            return False
        with self.lock:
            if self.passed < self.after:
                self.passed += 1
                return False
            self.held += 1
            return True


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


_bucket_no = [0]


def new_bucket(endpoint_url):
    import boto3
    _bucket_no[0] += 1
    name = f"rokfs-test-{os.getpid()}-{_bucket_no[0]}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=name)
    return name


def s3_spec(server, bucket=None, deadline=5):
    return {"type": "s3", "bucket": bucket or new_bucket(server.url), "prefix": "rk",
            "endpoint_url": server.url, "region": "us-east-1", "deadline": deadline}


@pytest.fixture(scope="module")
def moto_server(s3_server):
    """The endpoint URL of the session's moto S3 server (credentials are in
    os.environ), for tests that hand it to a daemon's config."""
    return s3_server.url


def make_bucket(endpoint, name):
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return s3


class DenyingS3Server:
    """moto's server in its own process with authentication on: a bucket, and
    an IAM user `nobody` whose keys the server knows but no policy allows
    anything (every S3 request: 403 AccessDenied); unknown keys get 403
    InvalidAccessKeyId. The first SETUP_REQUESTS requests, which make the
    user, its key and the bucket, are let through unauthenticated."""

    SETUP_REQUESTS = 3

    # moto's server on a port the kernel picks, which it prints once listening
    SERVE = ("import threading\n"
             "from moto.server import ThreadedMotoServer\n"
             "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
             "server.start()\n"
             "print(server.get_host_and_port()[1], flush=True)\n"
             "threading.Event().wait()\n")

    def __init__(self, bucket="rokfs-denied"):
        self.port = None
        self.bucket = bucket
        self.proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        import subprocess
        import sys
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self.SETUP_REQUESTS)}
        self.proc = subprocess.Popen([sys.executable, "-c", self.SERVE], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("moto server did not start")
        self.port = int(line)
        self.nobody = self._set_up()
        return self

    def _set_up(self):
        """The bucket, and (access key id, secret) of user `nobody`."""
        import boto3
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1")
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1").create_bucket(
            Bucket=self.bucket)
        return key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None
