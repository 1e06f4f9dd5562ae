"""Object stores: put/get/exists/list/delete of keys, a local directory or S3.

Invariants:
- `put` is atomic: a reader sees the whole object or nothing (the directory
  store writes a temporary file, fsyncs it and renames it into place; S3
  PUTs are atomic).
- Every operation that can fail transiently runs under `retry`: jittered
  exponential backoff until a deadline, then RemoteError (errno EIO).
  A missing key is NotFound, never retried.
- A ranged get returns the bytes the object has in that range, so fewer
  than asked (none at all past its end) when it is shorter: both backends
  alike, and the caller judges (chunks.py: Corrupt).
- These classes are blocking: callers run them in worker threads.
"""

import os
import random
import tempfile
import threading
import time
import urllib.parse

from ..errors import InvalidArgument, NotFound, RemoteError

DEFAULT_DEADLINE = 30.0
READ_TIMEOUT = 5.0              # seconds without a byte before one attempt fails (then retried)


class ObjectInfo(tuple):
    """(key, size, mtime)."""

    key = property(lambda self: self[0])
    size = property(lambda self: self[1])
    mtime = property(lambda self: self[2])


class ObjectStore:
    """The interface both backends implement (keys are '/'-separated)."""

    url = ""
    deadline = DEFAULT_DEADLINE
    page_size = 1000        # keys per LIST request (S3's maximum)

    def __init__(self):
        self.requests = 0
        self._count_lock = threading.Lock()

    def _count(self):
        with self._count_lock:
            self.requests += 1

    def put(self, key, data): raise NotImplementedError
    def get(self, key, start=None, end=None): raise NotImplementedError
    def exists(self, key): raise NotImplementedError
    def list(self, prefix=""): raise NotImplementedError
    def delete(self, key): raise NotImplementedError


def is_temp_failure(exc):
    """Worth another try? Connection trouble, timeouts, throttling, 5xx."""
    import botocore.exceptions as bx
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                        bx.ReadTimeoutError, bx.ConnectTimeoutError,
                        bx.ResponseStreamingError, bx.IncompleteReadError)):
        return True
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or err.get("Code") in (
            "SlowDown", "RequestTimeout", "Throttling", "InternalError", "ServiceUnavailable")
    if isinstance(exc, (bx.BotoCoreError, ConnectionError, TimeoutError)):
        return not isinstance(exc, (bx.NoCredentialsError, bx.ParamValidationError))
    return False


def retry(fn, *args, deadline=DEFAULT_DEADLINE, what="remote request", **kwargs):
    """Call fn until it succeeds, fails for good, or `deadline` seconds pass."""
    stop = time.monotonic() + deadline
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_temp_failure(exc):
                raise
            if time.monotonic() + delay > stop:
                raise RemoteError(f"{what}: remote unreachable for {deadline:.0f}s "
                                  f"({type(exc).__name__}: {exc})") from exc
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)


class DirStore(ObjectStore):
    """Objects as files under a directory (the embedded default remote)."""

    def __init__(self, path):
        super().__init__()
        self.path = os.path.abspath(path)
        self.url = "file://" + self.path
        os.makedirs(self.path, exist_ok=True)

    def _file(self, key):
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidArgument(f"bad object key {key!r}")
        return os.path.join(self.path, key)

    def put(self, key, data):
        self._count()
        path = self._file(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get(self, key, start=None, end=None):
        self._count()
        try:
            with open(self._file(key), "rb") as f:
                if start is None:
                    return f.read()
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise NotFound(f"no object {key!r} in {self.url}") from None

    def exists(self, key):
        self._count()
        return os.path.isfile(self._file(key))

    def list(self, prefix=""):
        self._count()
        out = []
        top = os.path.join(self.path, os.path.dirname(prefix)) if "/" in prefix else self.path
        for root, dirs, files in os.walk(top):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = os.path.join(root, name)
                key = os.path.relpath(full, self.path)
                if key.startswith(prefix):
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    out.append(ObjectInfo((key, st.st_size, st.st_mtime)))
        return sorted(out)

    def delete(self, key):
        self._count()
        try:
            os.unlink(self._file(key))
        except FileNotFoundError:
            pass


class S3Store(ObjectStore):
    """Objects in an S3 bucket under a prefix, through boto3."""

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None,
                 deadline=DEFAULT_DEADLINE, max_connections=32):
        super().__init__()
        import boto3
        import botocore.config
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.deadline = deadline
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3,
            read_timeout=READ_TIMEOUT, max_pool_connections=max_connections)
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config)

    def _call(self, what, fn, **kwargs):
        def once():
            self._count()
            return fn(Bucket=self.bucket, **kwargs)
        return retry(once, deadline=self.deadline, what=f"{what} {self.url}")

    def put(self, key, data):
        """bytes and bytearray bodies go to boto3 as they are (no copy)."""
        body = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        self._call(f"PUT {key}", self.client.put_object, Key=self.prefix + key, Body=body)

    def get(self, key, start=None, end=None):
        import botocore.exceptions as bx
        extra = {} if start is None else {"Range": f"bytes={start}-{end - 1}"}
        def once():
            self._count()
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
            return resp["Body"].read()
        try:
            return retry(once, deadline=self.deadline, what=f"GET {key} {self.url}")
        except bx.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"no object {key!r} in {self.url}") from None
            if code == "InvalidRange":        # the range starts past the object's end
                return b""
            raise RemoteError(f"GET {key} {self.url}: {exc}") from exc

    def exists(self, key):
        import botocore.exceptions as bx
        try:
            self._call(f"HEAD {key}", self.client.head_object, Key=self.prefix + key)
            return True
        except bx.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise RemoteError(f"HEAD {key} {self.url}: {exc}") from exc

    def list(self, prefix=""):
        out, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            resp = self._call(f"LIST {prefix}", self.client.list_objects_v2,
                              Prefix=self.prefix + prefix, MaxKeys=self.page_size, **extra)
            for obj in resp.get("Contents", []):
                out.append(ObjectInfo((obj["Key"][len(self.prefix):], obj["Size"],
                                       obj["LastModified"].timestamp())))
            if not resp.get("IsTruncated"):
                return out
            token = resp["NextContinuationToken"]

    def delete(self, key):
        self._call(f"DELETE {key}", self.client.delete_object, Key=self.prefix + key)

    def create_bucket(self):
        self._call("CREATE BUCKET", self.client.create_bucket)


def open_object_store(spec):
    """A dict {"type": "dir"|"s3", ...} or a URL 'file:///path' | 's3://bucket/prefix'."""
    if isinstance(spec, str):
        spec = parse_url(spec)
    kind = spec.get("type")
    if kind == "dir":
        return DirStore(spec["path"])
    if kind == "s3":
        if not spec.get("bucket"):
            raise InvalidArgument("an s3 remote needs a bucket")
        return S3Store(spec["bucket"], spec.get("prefix", ""), spec.get("endpoint_url"),
                       spec.get("region"), deadline=float(spec.get("deadline", DEFAULT_DEADLINE)))
    raise InvalidArgument(f"unknown remote type {kind!r} (use 'dir' or 's3')")


def parse_url(url):
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    if parts.scheme == "file" or (not parts.scheme and url.startswith("/")):
        return {"type": "dir", "path": parts.path or url}
    if parts.scheme == "s3":
        spec = {"type": "s3", "bucket": parts.netloc, "prefix": parts.path.strip("/")}
        for name in ("endpoint_url", "region", "deadline"):
            if name in query:
                spec[name] = query[name]
        spec.setdefault("endpoint_url", os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL"))
        return spec
    raise InvalidArgument(f"bad remote URL {url!r}: use file:///path or "
                          "s3://bucket/prefix[?endpoint_url=...&region=...]")
