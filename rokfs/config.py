"""The daemon's configuration: embedded defaults < TOML file < ROKFS_* env < flags.

Invariants:
- SETTINGS is the one table of scalar settings: (section, key, env var,
  flag, check). A setting is looked up in that order of precedence: the
  flag if given, else the environment variable, else the file, else the
  default.
- Every value is checked when loaded, wherever it came from, by its row's
  check: its type (a table where a string belongs is refused) and its range
  or form; what `load` returns is the checked value (chunk_size in bytes,
  control.mode as an int, pool.reserve in bytes or None for "auto"). A refusal is one InvalidArgument naming the
  setting and where the value came from; nothing is opened or started
  before `load` returns.
- A file that is not UTF-8, not TOML, or nested too deeply is refused the
  same way, never with another exception.
- `[remotes.NAME]` tables (or URLs) are checked by the remote store's own
  rules (rokfs.remote.objects.check_spec / parse_url: unknown keys,
  parameters and bad values refused) and then passed on unchanged; without
  a "default" one, remote "default" is the directory `remote` next to the
  pool (decided in Control.remote, for every front end alike).
- Unknown sections or keys in the file are refused (a typo is not ignored).
"""

import copy
import os
import tomllib

from . import paths
from .endpoints import parse_tcp_address
from .errors import InvalidArgument
from .fusefs import DEFAULT_WORKERS as DEFAULT_FUSE_WORKERS
from .names import check_name
from .remote.objects import check_spec, parse_url
from .runner import DEFAULT_CHUNK_SIZE, MIN_RESERVE
from .units import format_size, parse_size


def defaults():
    return {
        "pool": {"path": paths.default_pool(), "chunk_size": format_size(DEFAULT_CHUNK_SIZE),
                 "reserve": "auto"},
        "nbd": {"socket": paths.default_nbd_socket(), "listen": "", "tls": "off",
                "tls_cert": "", "tls_key": "", "tls_ca": ""},
        "fuse": {"mountpoint": "", "workers": DEFAULT_FUSE_WORKERS},
        "control": {"socket": paths.default_control_socket(), "mode": "0600", "group": ""},
        "metrics": {"listen": "127.0.0.1:9436"},
        "log": {"level": "info", "format": "kv"},
        "registry": {"poll": 10},
        "remotes": {},
    }


# -- checks: (value, setting name) -> the value to use, or InvalidArgument ----------------

def _string(value, name, *, empty=True):
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, not {_kind(value)}")
    if "\0" in value or (not empty and not value):
        raise InvalidArgument(f"{name} must be a {'' if empty else 'non-empty '}path, "
                              f"not {value!r}")
    return value


def _kind(value):
    return {dict: "a table", list: "an array", bool: f"{value!r}".lower()}.get(
        type(value), repr(value))


def path_or_off(value, name):
    """A path, or "" for off."""
    return _string(value, name)


def path(value, name):
    return _string(value, name, empty=False)


def chunk_size(value, name):
    """A size (64K, 65536), a power of two."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"{name} must be a size such as 32K, not {_kind(value)}")
    size = parse_size(value, name)
    if size <= 0 or size & (size - 1):
        raise InvalidArgument(f"{name} must be a power of two such as 32K, not {value!r}")
    return size


MAX_RESERVE = 1 << 40


def reserve(value, name):
    """"auto" (None: the engine's default, 1% of the filesystem within 2M..64M)
    or a size from MIN_RESERVE (the headroom metadata needs to free space
    at a full disk) to MAX_RESERVE."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"{name} must be auto or a size such as 64M, not {_kind(value)}")
    size = parse_size(value, name)
    if not MIN_RESERVE <= size <= MAX_RESERVE:
        raise InvalidArgument(f"{name} must be auto or a size from {format_size(MIN_RESERVE)} "
                              f"to {format_size(MAX_RESERVE)}, not {value!r}")
    return size


def address_or_off(what):
    """HOST:PORT (rokfs.endpoints' forms), or "" for off."""
    def check(value, name):
        if _string(value, name):
            parse_tcp_address(value, what)
        return value
    return check


def one_of(*choices):
    def check(value, name):
        if not isinstance(value, str) or value.lower() not in choices:
            raise InvalidArgument(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]},"
                                  f" not {_kind(value)}")
        return value.lower()
    return check


def file_mode(value, name):
    """Octal digits, as text ('0660') or a TOML integer (660), at most 0777."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        mode = int(_string(value, name), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise InvalidArgument(f"{name} must be an octal file mode such as 0660, "
                              f"not {_kind(value)}")
    return mode


def whole_number(low, high):
    """An integer from `low` to `high` (a TOML integer, or digits as text)."""
    def check(value, name):
        try:
            number = int(str(value), 10)
        except ValueError:
            number = None
        if isinstance(value, bool) or number is None or not low <= number <= high:
            raise InvalidArgument(f"{name} must be a whole number from {low} to {high}, "
                                  f"not {_kind(value)}")
        return number
    return check


def group(value, name):
    """A group name, a gid, or "" for the owner's group."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return _string(value, name)


SETTINGS = [   # section, key, environment variable, argparse dest, check
    ("pool", "path", paths.POOL_ENV, "pool", path),
    ("pool", "chunk_size", "ROKFS_CHUNK_SIZE", "chunk_size", chunk_size),
    ("pool", "reserve", "ROKFS_POOL_RESERVE", "pool_reserve", reserve),
    ("nbd", "socket", paths.NBD_SOCKET_ENV, "nbd_socket", path_or_off),
    ("nbd", "listen", "ROKFS_NBD_LISTEN", "nbd_listen", address_or_off("NBD listen address")),
    ("nbd", "tls", "ROKFS_NBD_TLS", "nbd_tls", one_of("off", "on", "require")),
    ("nbd", "tls_cert", "ROKFS_NBD_TLS_CERT", "nbd_tls_cert", path_or_off),
    ("nbd", "tls_key", "ROKFS_NBD_TLS_KEY", "nbd_tls_key", path_or_off),
    ("nbd", "tls_ca", "ROKFS_NBD_TLS_CA", "nbd_tls_ca", path_or_off),
    ("fuse", "mountpoint", "ROKFS_MOUNT", "mount", path_or_off),
    ("fuse", "workers", "ROKFS_FUSE_WORKERS", "fuse_workers", whole_number(1, 1024)),
    ("control", "socket", paths.CONTROL_ENV, "control_socket", path),
    ("control", "mode", "ROKFS_CONTROL_MODE", "control_mode", file_mode),
    ("control", "group", "ROKFS_CONTROL_GROUP", "control_group", group),
    ("metrics", "listen", "ROKFS_METRICS_LISTEN", "metrics_listen",
     address_or_off("metrics address")),
    ("log", "level", "ROKFS_LOG_LEVEL", "log_level", one_of("debug", "info", "warning",
                                                            "error")),
    ("log", "format", "ROKFS_LOG_FORMAT", "log_format", one_of("kv", "json")),
    ("registry", "poll", "ROKFS_REGISTRY_POLL", "registry_poll", whole_number(1, 86400)),
]


# -- loading ---------------------------------------------------------------------------------

def load(path=None, env=None, flags=None):
    """The effective configuration as a dict of sections, every value checked."""
    return from_document(read_file(path) if path else {}, path, env, flags)


def from_document(document, path=None, env=None, flags=None):
    """The configuration from a parsed file (`document`), the environment
    and the flags, every value checked."""
    env = os.environ if env is None else env
    config = defaults()
    origin = {}                      # (section, key) -> where its value came from
    _merge_file(config, origin, document, path)
    for section, key, var, dest, _ in SETTINGS:
        value = getattr(flags, dest, None) if flags is not None else None
        if value is not None:
            config[section][key], origin[section, key] = value, "--" + dest.replace("_", "-")
        elif env.get(var) is not None:
            config[section][key], origin[section, key] = env[var], var
    _check(config, origin, path)
    return config


def read_file(path):
    """The TOML document at `path`, or InvalidArgument saying why not."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InvalidArgument(f"cannot read config {path}: {exc.strerror}") from None
    return parse(data, path)


def parse(data, path):
    """The TOML document in `data` (bytes), or InvalidArgument saying why not."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"config {path} is not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"config {path} nests arrays or tables too deeply") from None


def _merge_file(config, origin, document, path):
    for section, table in document.items():
        if section not in config or not isinstance(table, dict):
            raise InvalidArgument(f"config {path}: unknown section [{section}]")
        if section == "remotes":
            config["remotes"] = copy.deepcopy(table)
            continue
        for key, value in table.items():
            if key not in config[section]:
                raise InvalidArgument(f"config {path}: unknown key {key!r} in [{section}]")
            config[section][key], origin[section, key] = value, f"config {path}"


def _check(config, origin, path):
    for section, key, _, _, check in SETTINGS:
        where = origin.get((section, key))
        name = f"{section}.{key}" + (f" (from {where})" if where else "")
        config[section][key] = check(config[section][key], name)
    for name, spec in config["remotes"].items():
        check_remote(name, spec, f"config {path}: [remotes.{name}]")


def check_remote(name, spec, where):
    """A configured remote: a valid name, and a valid table or URL."""
    try:
        check_name(name, "remote")
        if isinstance(spec, str):
            parse_url(spec)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    if not isinstance(spec, str):
        check_spec(spec, where)
