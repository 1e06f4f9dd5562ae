"""Fuzz target for the NBD protocol: what a client sends, fed to the sans-I/O
server connection (nbd_server.protocol) and its state machine; bench/fuzz.py
runs it as target `nbd`.

The first byte of an input picks how the rest is fed (the piece sizes, TLS
off/on/required, streamed writes); the rest is the bytes a client sends
from its first flags word on. The driver is the one tests/test_nbd_fuzz.py
uses (`feed_all`): RemoteProtocolError is the only exception the protocol
may raise, it is sticky, the connection always makes progress, and
everything the server writes parses as greeting, option replies and
replies to cookies that were sent. Anything else raised is a finding.

    python bench/fuzz_nbd.py --write-seeds tests/fuzz_corpus
writes a seed corpus (small; write payloads are random).
"""

import os
import random
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
sys.path.insert(0, TESTS)

from test_nbd_fuzz import feed_all, mutate, valid_session  # noqa: E402

TLS_MODES = ("off", "off", "on", "require")
SEED_LIMIT = 4096                  # feed_all checks the replies of inputs below this


def session(data):
    if not data:
        return
    mode = data[0]
    feed_all(data[1:], random.Random(mode), tls=TLS_MODES[mode & 3], stream=bool(mode & 4))


def seeds():
    rng = random.Random(2026)
    found = {}
    while len(found) < 12:
        data = valid_session(rng)
        if len(data) >= SEED_LIMIT:
            continue
        kind = "valid" if len(found) < 8 else "mutated"
        if kind == "mutated":
            data = mutate(rng, data)[:SEED_LIMIT - 1]
        found[f"{kind}-{len(found)}"] = bytes([len(found) & 7]) + data
    return found


def write_seeds(top):
    os.makedirs(os.path.join(top, "nbd"), exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(top, "nbd", name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write-seeds"] or len(sys.argv) != 3:
        sys.exit("usage: fuzz_nbd.py --write-seeds DIR")
    write_seeds(sys.argv[2])
