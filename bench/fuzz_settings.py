"""Fuzz targets for what rokfs reads from people: the daemon's config file,
the values written to `user.rokfs.*` xattrs, and remote URLs.

Each target takes one input of bytes and raises only on a finding.
InvalidArgument is the only exception a parser may raise; what it accepts
must hold the invariants its module promises, checked here again
independently: a config's values have the types and ranges rokfs.config
states, an xattr setter calls one verb with valid names, labels and sizes,
a remote URL becomes a spec that boto3 itself accepts.

    python bench/fuzz_settings.py --write-seeds tests/fuzz_corpus
writes the seed corpus (deterministic, small). Driven by atheris through
bench/fuzz.py (targets `config`, `xattr`, `remote_url`, instrumenting
SETTINGS_PARSERS there), and by hypothesis in tests/test_settings_fuzz.py.
"""

import os
import sys

from rokfs import config
from rokfs.errors import InvalidArgument
from rokfs.fusefs import xattrs
from rokfs.names import check_labels, check_name, split_snapshot
from rokfs.remote.objects import parse_url


# -- the config file ------------------------------------------------------------------

def config_file(data):
    try:
        cfg = config.from_document(config.parse(data, "fuzz.toml"), "fuzz.toml", env={})
    except InvalidArgument:
        return
    check_config_invariants(cfg)


def check_config_invariants(cfg):
    size = cfg["pool"]["chunk_size"]
    assert type(size) is int and size > 0 and size & (size - 1) == 0, size
    assert type(cfg["control"]["mode"]) is int and 0 <= cfg["control"]["mode"] <= 0o777
    assert cfg["log"]["level"] in ("debug", "info", "warning", "error")
    assert cfg["log"]["format"] in ("kv", "json") and cfg["nbd"]["tls"] in ("off", "on",
                                                                            "require")
    reserve = cfg["pool"]["reserve"]
    assert reserve is None or (type(reserve) is int
                               and config.MIN_RESERVE <= reserve <= config.MAX_RESERVE), reserve
    for section, key, _, _, _ in config.SETTINGS:
        if (section, key) == ("fuse", "workers"):
            assert type(cfg[section][key]) is int and 1 <= cfg[section][key] <= 1024
        elif (section, key) == ("registry", "poll"):
            assert type(cfg[section][key]) is int and 1 <= cfg[section][key] <= 86400
        elif (section, key) not in (("pool", "chunk_size"), ("pool", "reserve"),
                                    ("control", "mode"), ("control", "group")):
            assert isinstance(cfg[section][key], str), (section, key)
    for name, spec in cfg["remotes"].items():
        check_name(name, "remote")
        check_remote_spec(parse_url(spec) if isinstance(spec, str) else spec)


# -- xattr values -------------------------------------------------------------------------

SETTABLE = sorted(name for name, attr in xattrs.XATTRS.items() if attr.set)


class Node:
    def __init__(self, kind, name):
        self.kind, self.name = kind, name


class Recorder:
    """A Control stand-in: records the one verb a setter calls; a remote
    given as a URL is parsed as Control.remote would."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, verb):
        async def record(*args, **kwargs):
            remote = kwargs.get("remote")
            if remote not in (None, "default") and "://" in remote:
                check_remote_spec(parse_url(remote))
            self.calls.append((verb, args, kwargs))
        return record


def xattr(data):
    """First byte: which settable attribute; the rest: its value."""
    if not data:
        return
    name = SETTABLE[data[0] % len(SETTABLE)]
    attr = xattrs.XATTRS[name]
    kind = sorted(attr.kinds)[data[1] % len(attr.kinds)] if len(data) > 1 else xattrs.VOLUME
    node = Node(kind, "vol@snap" if kind == xattrs.SNAPSHOT else "vol")
    control = Recorder()
    try:
        run_to_end(attr.set(control, node, xattrs.decode(data[2:])))
    except InvalidArgument:
        return
    assert len(control.calls) == 1, control.calls
    check_verb_call(*control.calls[0])


def run_to_end(coroutine):
    """Run a coroutine that never suspends (the Recorder's verbs do not)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the setter suspended")


def check_verb_call(verb, args, kwargs):
    if verb in ("create_snapshot", "set_labels"):
        split_snapshot(args[0])
        check_labels(args[1])
    elif verb == "clone":
        check_name(args[1], "new volume")
    elif verb == "resize_volume":
        assert type(args[1]) is int and args[1] >= 0, args
    elif verb == "push":
        split_snapshot(args[0])
    elif verb == "pull":
        split_snapshot(args[0])
        check_name(args[1], "new volume")
    elif verb in ("set_policy", "delete_policy"):
        check_name(args[0], "policy target")
    else:
        assert verb in ("delete_volume", "delete_snapshot"), verb


# -- remote URLs -----------------------------------------------------------------------------

def remote_url(data):
    try:
        spec = parse_url(data.decode("utf-8"))
    except (UnicodeDecodeError, InvalidArgument):
        return
    check_remote_spec(spec)


def check_remote_spec(spec):
    """What boto3 would refuse at client creation, it must not be given."""
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url, \
        validate_region_name
    if spec["type"] == "dir":
        assert isinstance(spec["path"], str) and spec["path"], spec
        return
    assert isinstance(spec["bucket"], str) and spec["bucket"], spec
    endpoint = spec.get("endpoint_url")
    if endpoint:
        assert is_valid_endpoint_url(endpoint) or is_valid_ipv6_endpoint_url(endpoint), spec
    validate_region_name(spec.get("region"))


# -- seeds ------------------------------------------------------------------------------------

SEEDS = {
    "config": {          # and valid-example: tools/rokfs.toml
        "valid-remotes": b'[remotes.s3]\ntype = "s3"\nbucket = "b"\nregion = "eu-west-1"\n'
                         b'endpoint_url = "http://127.0.0.1:9000"\ndeadline = 5\n'
                         b'[remotes]\narchive = "file:///srv/r"\n',
        "valid-types": b"[pool]\nchunk_size = 65536\n[control]\nmode = 660\ngroup = 0\n"
                       b"[log]\nlevel = 'DEBUG'\n",
        "bad-socket-table": b"[control]\nsocket = { path = '/x' }\n",
        "bad-deadline": b"[remotes.x]\ntype = 's3'\nbucket = 'b'\ndeadline = 'soon'\n",
    },
    "xattr": {   # first byte picks the attribute (index into SETTABLE), second the node kind
        f"valid-{name}": bytes([i, 0]) + value
        for i, name in enumerate(SETTABLE)
        for value in [{"snapshot": b"s1 run=42", "clone": b"copy s1", "resize": b"20G",
                       "push": b"s1 s3://b/p?region=eu-west-1", "pull": b"v@s new",
                       "label": b"a=1 b=2", "delete": b"deferred"}.get(name, b"x")]
    },
    "remote_url": {
        "valid-s3": b"s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1"
                    b"&deadline=5",
        "valid-file": b"file:///srv/rokfs-remote",
        "valid-path": b"/srv/rokfs-remote",
        "bad-parameter": b"s3://b/p?endpont_url=http://x",
    },
}


EXAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                              "rokfs.toml")


def write_seeds(folder):
    with open(EXAMPLE_CONFIG, "rb") as f:
        SEEDS["config"]["valid-example"] = f.read()
    for target, seeds in SEEDS.items():
        os.makedirs(os.path.join(folder, target), exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, target, name), "wb") as f:
                f.write(data)


if __name__ == "__main__" and sys.argv[1:2] == ["--write-seeds"]:
    write_seeds(sys.argv[2])
