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
- Every other botocore/boto3 failure leaves S3Store as a RemoteError of one
  line, its cause and a hint (`s3_failure`): no credentials (where the
  process that talks to S3 looks for them), no such bucket, access denied
  (the policy needed), credentials refused, wrong region.
- A remote is given as a spec (a dict) or a URL; both are checked before
  anything is opened (`check_spec`, `parse_url`): an unknown type, key or
  URL parameter, or a value of the wrong type or range, is InvalidArgument
  naming it. Nothing is silently ignored or defaulted to AWS by a typo.
- `put_new` writes only if the key is absent (True) and never overwrites
  (False): an atomic link(2) in a directory, `If-None-Match: *` on S3 (a
  server that answers it with NotImplemented gets a HEAD then a PUT: the
  registry serializes its writers with a lock anyway, see its bucket.py).
- `get_tagged` is a conditional GET: (None, etag) while the object still
  has the ETag the caller holds, so polling an unchanged object costs no body.
- Every request attempt is counted in the store's RequestStats by
  operation, every failed one by kind (`error_kind`; a missing key the
  caller expects is no failure), every retry: the transfer metrics read
  them (Control.transfer_stats).
- These classes are blocking: callers run them in worker threads.
"""

import collections
import math
import os
import random
import re
import tempfile
import threading
import time
import urllib.parse

from ..errors import InvalidArgument, NotFound, RemoteError

DEFAULT_DEADLINE = 30.0
READ_TIMEOUT = 20.0             # seconds without a byte before one attempt fails; a fetch still ends at the deadline (store.py)


class ObjectInfo(tuple):
    """(key, size, mtime)."""

    key = property(lambda self: self[0])
    size = property(lambda self: self[1])
    mtime = property(lambda self: self[2])


class RequestStats:
    """What one object store did: request attempts by operation (put, get,
    head, list, delete, create), failed attempts by kind, retries. Bumped
    from worker threads under a lock; `copy` for a scrape."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = collections.Counter()
        self.errors = collections.Counter()
        self.retries = 0

    def request(self, op):
        with self._lock:
            self.requests[op] += 1

    def error(self, kind):
        with self._lock:
            self.errors[kind] += 1

    def retry(self):
        with self._lock:
            self.retries += 1

    def copy(self):
        with self._lock:
            return {"requests": dict(self.requests), "errors": dict(self.errors),
                    "retries": self.retries}


class ObjectStore:
    """The interface both backends implement (keys are '/'-separated)."""

    url = ""
    deadline = DEFAULT_DEADLINE
    page_size = 1000        # keys per LIST request (S3's maximum)

    def __init__(self):
        self.stats = RequestStats()

    @property
    def requests(self):
        """Request attempts so far, of every operation."""
        return sum(self.stats.copy()["requests"].values())

    def _count(self, op):
        self.stats.request(op)

    def put(self, key, data): raise NotImplementedError
    def put_new(self, key, data): raise NotImplementedError
    def get_tagged(self, key, etag=None): raise NotImplementedError
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


def error_kind(exc):
    """What kind of failure an S3 request attempt had, for the metrics:
    timeout, connection, throttled, server (other 5xx), denied (403 and
    refused credentials), credentials (none found), not_found, client
    (other 4xx) or other."""
    import botocore.exceptions as bx
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectTimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionClosedError,
                        bx.ResponseStreamingError, bx.IncompleteReadError, ConnectionError)):
        return "connection"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                        bx.CredentialRetrievalError)):
        return "credentials"
    if isinstance(exc, bx.ClientError):
        return _client_error_kind(exc)
    return "other"


THROTTLED = {"SlowDown", "Throttling", "RequestLimitExceeded", "ServiceUnavailable"}


def _client_error_kind(exc):
    code = _error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in THROTTLED or status == 503:
        return "throttled"
    if status >= 500:
        return "server"
    if code in DENIED or code in CREDENTIALS_REFUSED or status == 403:
        return "denied"
    if code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404:
        return "not_found"
    return "client"


def retry(fn, *args, deadline=DEFAULT_DEADLINE, what="remote request", hint="",
          on_retry=None, **kwargs):
    """Call fn until it succeeds, fails for good, or `deadline` seconds pass
    (then RemoteError, ending with `hint`); `on_retry()` before each new try."""
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
                                  f"({type(exc).__name__}: {one_line(exc)})"
                                  + (f": {hint}" if hint else "")) from exc
            if on_retry is not None:
                on_retry()
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


class DirStore(ObjectStore):
    """Objects as files under a directory (the embedded default remote)."""

    def __init__(self, path):
        super().__init__()
        self.path = os.path.abspath(path)
        self.url = "file://" + self.path
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise RemoteError(f"remote directory {self.path}: {exc.strerror}") from None

    def _file(self, key):
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidArgument(f"bad object key {key!r}")
        return os.path.join(self.path, key)

    def put(self, key, data):
        self._count("put")
        path, tmp = self._written_aside(key, data)
        try:
            os.rename(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def put_new(self, key, data):
        self._count("put")
        path, tmp = self._written_aside(key, data)
        try:
            os.link(tmp, path)            # fails if the key exists: never overwrites
            return True
        except FileExistsError:
            return False
        finally:
            _unlink_quietly(tmp)

    def _written_aside(self, key, data):
        """(path of `key`, a temporary file beside it holding `data`, synced)."""
        path = self._file(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return path, tmp

    def get_tagged(self, key, etag=None):
        self._count("get")
        try:
            with open(self._file(key), "rb") as f:
                st = os.fstat(f.fileno())
                tag = f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"
                return (None, tag) if tag == etag else (f.read(), tag)
        except FileNotFoundError:
            raise NotFound(f"no object {key!r} in {self.url}") from None

    def get(self, key, start=None, end=None):
        self._count("get")
        try:
            with open(self._file(key), "rb") as f:
                if start is None:
                    return f.read()
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise NotFound(f"no object {key!r} in {self.url}") from None

    def exists(self, key):
        self._count("head")
        return os.path.isfile(self._file(key))

    def list(self, prefix=""):
        self._count("list")
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
        self._count("delete")
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
        import botocore.exceptions as bx
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.deadline = deadline
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # one attempt per botocore call (its "max_attempts" would add a hidden
        # retry): `retry` is the one retry loop, and counts what it does
        config = botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=3,
            read_timeout=READ_TIMEOUT, max_pool_connections=max_connections)
        try:
            self.client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
                config=config)
        except (ValueError, bx.BotoCoreError) as exc:
            raise InvalidArgument(f"S3 remote {self.url}: {one_line(exc)}") from None

    def _call(self, what, op, fn, expected=(), **kwargs):
        return self._request(what, op, lambda: fn(Bucket=self.bucket, **kwargs), expected)

    def _request(self, what, op, once, expected=()):
        """once() under retry, each attempt counted (as `op`, and by kind
        when it fails). A ClientError whose code is in `expected` is raised
        as it is, for the caller to judge; any other botocore failure
        becomes the RemoteError `s3_failure` words."""
        import botocore.exceptions as bx
        what = f"{what} {self.url}"

        def attempt():
            self._count(op)
            try:
                return once()
            except Exception as exc:
                if not (isinstance(exc, bx.ClientError) and _error_code(exc) in expected):
                    self.stats.error(error_kind(exc))
                raise
        try:
            return retry(attempt, deadline=self.deadline, what=what,
                         hint=f"is the endpoint {self.endpoint()} right, and up?",
                         on_retry=self.stats.retry)
        except bx.ClientError as exc:
            if _error_code(exc) in expected:
                raise
            raise s3_failure(exc, what, self) from exc
        except bx.BotoCoreError as exc:
            raise s3_failure(exc, what, self) from exc

    def endpoint(self):
        """Where requests go, for messages."""
        return self.endpoint_url or f"AWS S3 ({self.region or 'us-east-1'})"

    def put(self, key, data):
        """bytes and bytearray bodies go to boto3 as they are (no copy)."""
        body = data if isinstance(data, (bytes, bytearray)) else bytes(data)
        self._call(f"PUT {key}", "put", self.client.put_object, Key=self.prefix + key,
                   Body=body)

    conditional_puts = True        # until the server says it has none

    def put_new(self, key, data):
        import botocore.exceptions as bx
        if self.conditional_puts:
            try:
                self._call(f"PUT {key}", "put", self.client.put_object, Key=self.prefix + key,
                           Body=data, IfNoneMatch="*",
                           expected=("PreconditionFailed", "412", "NotImplemented", "501"))
                return True
            except bx.ClientError as exc:
                if _error_code(exc) in ("PreconditionFailed", "412"):
                    return False
                self.conditional_puts = False
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def get_tagged(self, key, etag=None):
        import botocore.exceptions as bx
        extra = {"IfNoneMatch": etag} if etag else {}
        def once():
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
            return resp["Body"].read(), resp["ETag"]
        try:
            return self._request(f"GET {key}", "get", once,
                                 expected=("NoSuchKey", "404", "304"))
        except bx.ClientError as exc:
            if _error_code(exc) == "304":
                return None, etag
            raise NotFound(f"no object {key!r} in {self.url}") from None

    def get(self, key, start=None, end=None):
        import botocore.exceptions as bx
        extra = {} if start is None else {"Range": f"bytes={start}-{end - 1}"}
        def once():
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
            return resp["Body"].read()
        try:
            return self._request(f"GET {key}", "get", once,
                                 expected=("NoSuchKey", "404", "InvalidRange"))
        except bx.ClientError as exc:
            if _error_code(exc) == "InvalidRange":    # the range starts past the object's end
                return b""
            raise NotFound(f"no object {key!r} in {self.url}") from None

    def exists(self, key):
        import botocore.exceptions as bx
        try:
            self._call(f"HEAD {key}", "head", self.client.head_object,
                       expected=("404", "NoSuchKey"), Key=self.prefix + key)
            return True
        except bx.ClientError:
            return False

    def list(self, prefix=""):
        out, token = [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            resp = self._call(f"LIST {prefix}", "list", self.client.list_objects_v2,
                              Prefix=self.prefix + prefix, MaxKeys=self.page_size, **extra)
            for obj in resp.get("Contents", []):
                out.append(ObjectInfo((obj["Key"][len(self.prefix):], obj["Size"],
                                       obj["LastModified"].timestamp())))
            if not resp.get("IsTruncated"):
                return out
            token = resp["NextContinuationToken"]

    def delete(self, key):
        self._call(f"DELETE {key}", "delete", self.client.delete_object, Key=self.prefix + key)

    def create_bucket(self):
        self._call("CREATE BUCKET", "create", self.client.create_bucket)


# -- S3 failures, in words ----------------------------------------------------------

NO_CREDENTIALS = (
    "no S3 credentials found: the process that talks to S3 looks for them in its own "
    "environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), in "
    "~/.aws/credentials of the user it runs as, and in an instance or pod role; for rokctl "
    "and the FUSE xattrs that process is the daemon (rokfs serve), not your shell")
DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
CREDENTIALS_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                       "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity"}
WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException"}


def one_line(exc):
    return " ".join(str(exc).split())


def _error_code(exc):
    return exc.response.get("Error", {}).get("Code", "")


def s3_failure(exc, what, store):
    """The RemoteError for a botocore/boto3 failure of `store`: one line,
    what failed, the cause and a hint."""
    import botocore.exceptions as bx
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError,
                        bx.CredentialRetrievalError)):
        return RemoteError(f"{what}: {NO_CREDENTIALS}")
    if isinstance(exc, bx.ClientError):
        return RemoteError(f"{what}: {_client_failure(exc, store)}")
    return RemoteError(f"{what}: {type(exc).__name__}: {one_line(exc)}")


def _client_failure(exc, store):
    """Cause and hint for an error answer of the S3 server."""
    code = _error_code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    said = one_line(f"{code or status}: "
                    f"{exc.response.get('Error', {}).get('Message') or 'no message'}")
    if code == "NoSuchBucket":
        return (f"no bucket {store.bucket!r} at {store.endpoint()} ({said}): the bucket must "
                "exist (rokfs never creates one); create it or fix the name")
    if code in CREDENTIALS_REFUSED:
        return (f"the S3 server refused the credentials ({said}): check the access key and "
                "secret of the process that talks to S3 (for rokctl: the daemon)")
    if code in DENIED or status == 403:            # a HEAD's 403 has no code but "403"
        return f"access denied ({said}): the credentials need {policy_needed(store)}"
    if code in WRONG_REGION:
        return (f"the bucket answers from another region ({said}): set region= to the "
                "bucket's region")
    return f"the S3 server answered {status} {said}"


def policy_needed(store):
    """The IAM permissions rokfs uses on a bucket and prefix, as a hint."""
    arn = f"arn:aws:s3:::{store.bucket}"
    return (f"s3:ListBucket on {arn} and s3:GetObject, s3:PutObject, s3:DeleteObject on "
            f"{arn}/{store.prefix}*")


# -- specs and URLs -------------------------------------------------------------------

SPEC_KEYS = {"dir": ("type", "path"),
             "s3": ("type", "bucket", "prefix", "endpoint_url", "region", "deadline")}
URL_PARAMETERS = ("endpoint_url", "region", "deadline")      # of s3:// URLs
MAX_DEADLINE = 24 * 3600.0
_BUCKET = re.compile(r"[a-zA-Z0-9._-]{1,255}")                 # botocore's own rule
_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")
URL_USAGE = "use file:///path or s3://bucket/prefix[?endpoint_url=...&region=...&deadline=...]"


def open_object_store(spec):
    """A dict {"type": "dir"|"s3", ...} or a URL 'file:///path' | 's3://bucket/prefix'."""
    spec = parse_url(spec) if isinstance(spec, str) else check_spec(spec)
    if spec["type"] == "dir":
        return DirStore(spec["path"])
    return S3Store(spec["bucket"], spec.get("prefix", ""), spec.get("endpoint_url"),
                   spec.get("region"), deadline=deadline_of(spec.get("deadline"), "deadline"))


def check_spec(spec, where="remote"):
    """`spec` if it is a valid remote spec, else InvalidArgument naming what is wrong."""
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where} must be a table or a URL, not {_type_name(spec)}")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in SPEC_KEYS:
        raise InvalidArgument(f"{where}: unknown remote type {kind!r} (use 'dir' or 's3')")
    unknown = sorted(set(spec) - set(SPEC_KEYS[kind]))
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {unknown[0]!r} for a {kind!r} remote "
                              f"(known: {', '.join(SPEC_KEYS[kind])})")
    for key in SPEC_KEYS[kind][1:]:
        CHECKS[key](spec.get(key), f"{where}: {key}")
    return spec


def _type_name(value):
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _text(value, what, required=False):
    if value is None:
        if required:
            raise InvalidArgument(f"{what} is missing")
        return None
    if not isinstance(value, str) or (required and not value) or "\0" in value:
        raise InvalidArgument(f"{what} must be a {'non-empty ' if required else ''}string, "
                              f"not {value!r}")
    return value


def check_path(value, what):
    return _text(value, what, required=True)


def check_bucket(value, what):
    if not _BUCKET.fullmatch(_text(value, what, required=True)):
        raise InvalidArgument(f"{what}: {value!r} is not a bucket name")
    return value


def check_endpoint(value, what):
    """None, or an http(s) URL of a host (and port) that botocore takes too."""
    if _text(value, what) is None:
        return None
    if not (_is_plain_http_url(value) and _botocore_takes(value)):
        raise InvalidArgument(f"{what}: {value!r} is not an endpoint URL "
                              "(use http(s)://HOST[:PORT])")
    return value


def _is_plain_http_url(value):
    try:
        parts = urllib.parse.urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and not (parts.query or parts.fragment or "@" in parts.netloc or " " in value))


def _botocore_takes(endpoint):
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url
    return bool(is_valid_endpoint_url(endpoint) or is_valid_ipv6_endpoint_url(endpoint))


def check_region(value, what):
    if _text(value, what) is not None and not _REGION.fullmatch(value):
        raise InvalidArgument(f"{what}: {value!r} is not a region name (such as eu-west-1)")
    return value


def deadline_of(value, what):
    """Seconds, from a number or a numeric string: finite, > 0, at most a day."""
    if value is None:
        return DEFAULT_DEADLINE
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds <= MAX_DEADLINE:          # also refuses nan
        raise InvalidArgument(f"{what} must be a number of seconds from 0 to "
                              f"{MAX_DEADLINE:.0f}, not {value!r}")
    return seconds


CHECKS = {"path": check_path, "bucket": check_bucket, "prefix": _text,
          "endpoint_url": check_endpoint, "region": check_region, "deadline": deadline_of}


def parse_url(url):
    """A checked spec from 'file:///path', '/path' or
    's3://bucket/prefix?endpoint_url=...&region=...&deadline=...'."""
    if not isinstance(url, str) or not url:
        raise InvalidArgument(f"bad remote URL {url!r}: {URL_USAGE}")
    if url.startswith("/"):
        return check_spec({"type": "dir", "path": url}, f"remote {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                       strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidArgument(f"bad remote URL {url!r}: {exc}") from None
    if parts.fragment:
        raise InvalidArgument(f"bad remote URL {url!r}: it has a #fragment")
    if parts.scheme == "file":
        return _file_url(url, parts, query)
    if parts.scheme == "s3":
        return _s3_url(url, parts, query)
    raise InvalidArgument(f"bad remote URL {url!r}: {URL_USAGE}")


def _parameters(url, query, known):
    """The URL's query as a dict; an unknown or repeated parameter is refused."""
    params = {}
    for name, value in query:
        if name not in known:
            raise InvalidArgument(f"remote URL {url!r}: unknown parameter {name!r} "
                                  f"(known: {', '.join(known) or 'none'})")
        if name in params:
            raise InvalidArgument(f"remote URL {url!r}: parameter {name!r} given twice")
        params[name] = value
    return params


def _file_url(url, parts, query):
    _parameters(url, query, ())
    if parts.netloc not in ("", "localhost"):
        raise InvalidArgument(f"bad remote URL {url!r}: a file URL names a local path "
                              "(file:///path)")
    path = urllib.parse.unquote(parts.path)
    return check_spec({"type": "dir", "path": path}, f"remote URL {url!r}")


def _s3_url(url, parts, query):
    spec = {"type": "s3", "bucket": parts.netloc, "prefix": parts.path.strip("/"),
            **_parameters(url, query, URL_PARAMETERS)}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    spec.setdefault("endpoint_url", endpoint)
    return check_spec(spec, f"remote URL {url!r}")
