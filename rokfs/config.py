"""The daemon's configuration: embedded defaults < TOML file < ROKFS_* env < flags.

Invariants:
- SETTINGS is the one table of scalar settings: (section, key, env var,
  flag). A setting is looked up in that order of precedence: the flag if
  given, else the environment variable, else the file, else the default.
- `[remotes.NAME]` tables pass through unchanged to rokfs.remote.open_remote;
  without a "default" one, remote "default" is the directory `remote` next to
  the pool (decided in Control.remote, for every front end alike).
- Unknown sections or keys in the file are refused (a typo is not ignored).
"""

import copy
import os
import tomllib

from . import paths
from .endpoints import parse_tcp_address
from .errors import InvalidArgument
from .fusefs import DEFAULT_WORKERS as DEFAULT_FUSE_WORKERS
from .runner import DEFAULT_CHUNK_SIZE
from .units import format_size


def defaults():
    return {
        "pool": {"path": paths.default_pool(), "chunk_size": format_size(DEFAULT_CHUNK_SIZE)},
        "nbd": {"socket": paths.default_nbd_socket(), "listen": "", "tls": "off",
                "tls_cert": "", "tls_key": "", "tls_ca": ""},
        "fuse": {"mountpoint": "", "workers": DEFAULT_FUSE_WORKERS},
        "control": {"socket": paths.default_control_socket(), "mode": "0600", "group": ""},
        "metrics": {"listen": "127.0.0.1:9436"},
        "log": {"level": "info", "format": "kv"},
        "remotes": {},
    }


SETTINGS = [   # section, key, environment variable, argparse dest
    ("pool", "path", paths.POOL_ENV, "pool"),
    ("pool", "chunk_size", "ROKFS_CHUNK_SIZE", "chunk_size"),
    ("nbd", "socket", paths.NBD_SOCKET_ENV, "nbd_socket"),
    ("nbd", "listen", "ROKFS_NBD_LISTEN", "nbd_listen"),
    ("nbd", "tls", "ROKFS_NBD_TLS", "nbd_tls"),
    ("nbd", "tls_cert", "ROKFS_NBD_TLS_CERT", "nbd_tls_cert"),
    ("nbd", "tls_key", "ROKFS_NBD_TLS_KEY", "nbd_tls_key"),
    ("nbd", "tls_ca", "ROKFS_NBD_TLS_CA", "nbd_tls_ca"),
    ("fuse", "mountpoint", "ROKFS_MOUNT", "mount"),
    ("fuse", "workers", "ROKFS_FUSE_WORKERS", "fuse_workers"),
    ("control", "socket", paths.CONTROL_ENV, "control_socket"),
    ("control", "mode", "ROKFS_CONTROL_MODE", "control_mode"),
    ("control", "group", "ROKFS_CONTROL_GROUP", "control_group"),
    ("metrics", "listen", "ROKFS_METRICS_LISTEN", "metrics_listen"),
    ("log", "level", "ROKFS_LOG_LEVEL", "log_level"),
    ("log", "format", "ROKFS_LOG_FORMAT", "log_format"),
]


def load(path=None, env=None, flags=None):
    """The effective configuration as a dict of sections."""
    env = os.environ if env is None else env
    config = defaults()
    if path:
        _merge_file(config, path)
    for section, key, var, dest in SETTINGS:
        value = getattr(flags, dest, None) if flags is not None else None
        if value is None:
            value = env.get(var)
        if value is not None:
            config[section][key] = value
    _check(config)
    return config


def _merge_file(config, path):
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise InvalidArgument(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config {path} is not valid TOML: {exc}") from None
    for section, table in data.items():
        if section not in config or not isinstance(table, dict):
            raise InvalidArgument(f"config {path}: unknown section [{section}]")
        if section == "remotes":
            config["remotes"] = copy.deepcopy(table)
            continue
        for key, value in table.items():
            if key not in config[section]:
                raise InvalidArgument(f"config {path}: unknown key {key!r} in [{section}]")
            config[section][key] = value


def _whole_number(value, name, low, high):
    try:
        number = int(str(value), 10)
    except ValueError:
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise InvalidArgument(f"{name} must be a whole number from {low} to {high}, "
                              f"not {value!r}")
    return number


def _check(config):
    if config["nbd"]["tls"] not in ("off", "on", "require"):
        raise InvalidArgument("nbd.tls must be off, on or require")
    if config["log"]["format"] not in ("kv", "json"):
        raise InvalidArgument("log.format must be kv or json")
    if str(config["log"]["level"]).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InvalidArgument("log.level must be debug, info, warning or error")
    try:
        config["control"]["mode"] = int(str(config["control"]["mode"]), 8)
    except ValueError:
        raise InvalidArgument("control.mode must be an octal file mode such as 0660") from None
    config["fuse"]["workers"] = _whole_number(config["fuse"]["workers"], "fuse.workers", 1, 1024)
    for section, what in (("nbd", "NBD listen address"), ("metrics", "metrics address")):
        if config[section]["listen"]:
            parse_tcp_address(config[section]["listen"], what)
    for name, spec in config["remotes"].items():
        if not isinstance(spec, (dict, str)):
            raise InvalidArgument(f"remote {name!r} must be a table or a URL")
