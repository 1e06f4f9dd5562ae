"""What people type, fed at random to its parsers (bench/fuzz_settings.py's
targets, which atheris drives for longer runs): the config loader, xattr
values and remote URLs raise InvalidArgument or accept a value that holds
their invariants, never anything else; and the committed seeds pass."""

import os
import sys

import pytest
from hypothesis import given, strategies as st

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_corpus")
sys.path.insert(0, BENCH)

import fuzz_settings  # noqa: E402
from rokfs import config  # noqa: E402
from rokfs.errors import InvalidArgument  # noqa: E402

TARGETS = {"config": fuzz_settings.config_file, "xattr": fuzz_settings.xattr,
           "remote_url": fuzz_settings.remote_url}


def seeds(target):
    folder = os.path.join(CORPUS, target)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            yield name, f.read()


def test_valid_seeds_are_accepted():
    for name, data in seeds("config"):
        if name.startswith("valid"):
            config.from_document(config.parse(data, name), name, env={})
    for name, data in seeds("remote_url"):
        if name.startswith("valid"):
            fuzz_settings.parse_url(data.decode())


@pytest.mark.parametrize("target", sorted(TARGETS))
@given(data=st.binary(max_size=300))
def test_random_bytes_find_nothing(target, data):
    TARGETS[target](data)


URL_PIECES = st.sampled_from(["s3://", "file://", "/", "b", "bucket", "?", "&", "=", "#", ":",
                              "[", "]", "%", "endpoint_url", "region", "deadline", "endpont_url",
                              "http://h:9000", "https://[::1]:9", "nan", "1e999", "-5", "5",
                              "eu-west-1", "@", " ", "\x00", "..", "ü"])


@given(st.lists(URL_PIECES, max_size=12).map("".join))
def test_url_shaped_text_finds_nothing(url):
    fuzz_settings.remote_url(url.encode())


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["32K", "0600", "660", "127.0.0.1:9", ":0", "off", "json",
                              "DEBUG", "s3://b/p", "/srv/r", "", "1.5K"]))
VALUES = SCALARS | st.lists(SCALARS, max_size=2) | st.dictionaries(st.text(max_size=4),
                                                                    SCALARS, max_size=2)
KEYS = st.sampled_from(sorted({key for _, key, *_ in config.SETTINGS}
                              | {"type", "bucket", "path", "prefix", "endpoint_url", "region",
                                 "deadline", "bogus"}))
SECTIONS = st.sampled_from(sorted(config.defaults()) + ["bogus"])
TABLES = st.dictionaries(KEYS | st.text(max_size=6), VALUES, max_size=5)
DOCUMENTS = st.dictionaries(SECTIONS, TABLES | st.dictionaries(st.text(max_size=4), TABLES,
                                                               max_size=2), max_size=3)


@given(DOCUMENTS)
def test_config_documents_are_checked_or_refused(document):
    try:
        cfg = config.from_document(document, "fuzz.toml", env={})
    except InvalidArgument:
        return
    fuzz_settings.check_config_invariants(cfg)
