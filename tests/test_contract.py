"""The block-device contract: the same tests against every kind of image.

Kinds (adapters in contract_helpers.py): an engine Volume, an engine
Snapshot, the control Device, the FUSE image file, an NBD export (libnbd),
and a lazily pulled volume read without a hydrator. Every read is compared
with a plain bytearray model of what the image should hold.

Images are SIZE bytes (64 chunks of 32 KiB and a last partial chunk of
1536 bytes) holding CONTENT: random bytes, with a few chunks never written.

What does not apply to a kind is left out of its matrix (not skipped: a
skip is kept for what this machine lacks); each kind's `lacks` says why:
- an engine Snapshot takes no writes (no write methods at all) and has no
  resize: the writing tests skip it, test_read_only_refusal covers it;
- an engine Volume is the writable image: its read-only form is the
  engine Snapshot kind;
- the FUSE view has no fallocate: no trim or write-zeroes on image files;
- NBD has no resize request: the kind resizes through the control API and
  reconnects (an export's size is fixed for a connection's life).

Deletion while open follows the image lifecycle (DESIGN.md): a plain delete
of a held image is refused naming the holders; a deferred delete hides the
image at once, keeps serving its holders their own bytes, and frees it when
the last one lets go, or at the next open after a crash.
"""

import collections
import contextlib
import mmap
import random

import pytest
import trio

from contract_helpers import (
    CHUNK, CONTENT, HOLDER, SECRET, SIZE, ControlKind, EngineKind, EngineSnapshotKind,
    FuseKind, NbdKind, NotApplicable, PulledKind, Refused, DaemonServices, assert_same,
    content, new_name, push_content, read_pool_copy, wait_for)
from fuse_helpers import serving

KINDS = ["volume", "snapshot", "device", "fuse", "nbd", "pulled"]
NCHUNKS = -(-SIZE // CHUNK)
LAST = SIZE - SIZE % CHUNK           # where the last (partial) chunk starts


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One `rokfs serve --mount` (FUSE + NBD + control) for the module."""
    with serving(tmp_path_factory.mktemp("contract")) as d:
        services = DaemonServices(d)
        try:
            yield services
        finally:
            services.close()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A directory remote holding `src@base` (CONTENT), for the pulled kind."""
    tmp = tmp_path_factory.mktemp("pushed")
    trio.run(push_content, tmp / "pool", tmp / "remote")
    return tmp / "remote"


KIND_CLASSES = {"volume": EngineKind, "snapshot": EngineSnapshotKind, "device": ControlKind,
                "fuse": FuseKind, "nbd": NbdKind, "pulled": PulledKind}


def kinds(*needs):
    """Run the test against every kind that has what it needs (a kind's
    `lacks` names what it has not, and why)."""
    params = [name for name in KINDS
              if not any(n in KIND_CLASSES[name].lacks for n in needs)]
    return pytest.mark.parametrize("kind", params, indirect=True)


@pytest.fixture
def kind(request, tmp_path):
    name = request.param
    if name in ("fuse", "nbd"):
        made = (FuseKind if name == "fuse" else NbdKind)(request.getfixturevalue("daemon"))
    elif name == "pulled":
        made = PulledKind(tmp_path, request.getfixturevalue("pushed"))
    else:
        made = KIND_CLASSES[name](tmp_path)
    yield made
    made.shutdown()


# -- helpers ---------------------------------------------------------------------------


def alignment_cases(size=SIZE, cs=CHUNK):
    """(what, offset, length): every alignment the contract covers."""
    last = size - size % cs
    return [
        ("first byte", 0, 1),
        ("one sector inside a chunk", cs + 512, 512),
        ("sectors across a chunk boundary", 2 * cs - 1024, 2048),
        ("unaligned inside a hole chunk", 3 * cs + 7, 100),
        ("last byte of a chunk", 6 * cs - 1, 1),
        ("unaligned across a chunk boundary", 7 * cs - 3, 10),
        ("unaligned across several chunks", 8 * cs + 1000, 3 * cs + 333),
        ("a whole chunk", 12 * cs, cs),
        ("whole chunks", 14 * cs, 4 * cs),
        ("chunk-aligned start, unaligned end", 20 * cs, cs + 5),
        ("unaligned start, chunk-aligned end", 24 * cs - 5, cs + 5),
        ("whole chunks across holes", 39 * cs, 3 * cs),
        ("the last whole chunk", last - cs, cs),
        ("the last partial chunk", last, size - last),
        ("into the last partial chunk", last - 700, 1200),
        ("the last whole and partial chunks", last - cs, size - last + cs),
        ("last sector", size - 512, 512),
        ("last byte", size - 1, 1),
        ("everything", 0, size),
    ]


PAST_END = [("at the end", SIZE, 1), ("across the end", SIZE - 100, 200),
            ("sectors across the end", SIZE - 512, 1024),
            ("a chunk past the end", SIZE + CHUNK, 512)]


@contextlib.contextmanager
def refused(kind, what):
    """The operation must fail with the kind's own error for `what`."""
    with pytest.raises(Refused) as info:
        yield info
    assert info.value.code == kind.refusals[what], \
        f"{kind.id}: {what}: expected {kind.refusals[what]}, got {info.value}"


async def unsupported(call):
    """Run `call()`; the reason if the kind has no such operation, else None."""
    try:
        await call()
    except NotApplicable as exc:
        return str(exc)
    return None


def neighbourhood(off, length, size=SIZE):
    lo, hi = max(0, off - CHUNK), min(size, off + length + CHUNK)
    return lo, hi - lo


async def check_range(h, model, off, length, what):
    lo, n = neighbourhood(off, length, len(model))
    assert_same(await h.pread(lo, n), model[lo:lo + n], what)


async def read_only_image(kind):
    """A read-only image of the kind holding CONTENT."""
    if kind.id == "snapshot":
        return await kind.image()
    return await kind.snapshot_volume(await kind.image(), "ro")


def chunks_of(data):
    return [bytes(data[c * CHUNK:(c + 1) * CHUNK]) for c in range(-(-len(data) // CHUNK))]


# -- reads and writes ---------------------------------------------------------------------


@kinds()
async def test_size_and_content(kind):
    h = await kind.open(await kind.image())
    assert await h.size() == SIZE
    assert_same(await h.read_all(), CONTENT, f"{kind.id}: the whole image")
    await h.close()


@kinds()
async def test_reads_at_every_alignment(kind):
    h = await kind.open(await kind.image())
    for what, off, n in alignment_cases():
        assert_same(await h.pread(off, n), CONTENT[off:off + n],
                    f"{kind.id}: read {what} ({off}+{n})")
    await h.close()


@kinds("writes")
async def test_writes_at_every_alignment(kind):
    h = await kind.open(await kind.image())
    model, rng = bytearray(CONTENT), random.Random(7)
    for what, off, n in alignment_cases():
        data = rng.randbytes(n)
        await h.pwrite(off, data)
        model[off:off + n] = data
        await check_range(h, model, off, n, f"{kind.id}: write {what} ({off}+{n})")
    await h.flush()
    assert_same(await h.read_all(), model, f"{kind.id}: after every write")
    await h.close()


@kinds("writes", "trim")
@pytest.mark.parametrize("op", ["trim", "zero", "zero-no-hole"])
async def test_trim_and_zero_read_back_as_zeros(kind, op):
    h = await kind.open(await kind.image())
    model, rng = bytearray(CONTENT), random.Random(8)
    for what, off, n in alignment_cases():
        lo, span = neighbourhood(off, n)
        data = rng.randbytes(span)                    # neighbours that hold data
        await h.pwrite(lo, data)
        model[lo:lo + span] = data
        if op == "trim":
            await h.trim(off, n)
        else:
            await h.zero(off, n, no_hole=op == "zero-no-hole")
        model[off:off + n] = bytes(n)
        await check_range(h, model, off, n, f"{kind.id}: {op} {what} ({off}+{n})")
    await h.flush()
    assert_same(await h.read_all(), model, f"{kind.id}: after every {op}")
    await h.close()


# -- flush ----------------------------------------------------------------------------------


@kinds()
async def test_flush_makes_writes_durable(kind, tmp_path):
    """A copy of the pool taken after a flush (what a crash leaves) holds what
    was flushed; a chunk written after the flush holds its flushed or its
    final state, never a mix."""
    h = await kind.open(await kind.image())
    model, rng = bytearray(CONTENT), random.Random(9)
    late = set()
    if not h.read_only:
        for what, off, n in alignment_cases()[:-1]:
            data = rng.randbytes(n)
            await h.pwrite(off, data)
            model[off:off + n] = data
    await h.flush()
    flushed = bytes(model)
    if not h.read_only:
        for off, n in [(CHUNK + 100, 50), (30 * CHUNK, 2 * CHUNK), (LAST + 10, 20)]:
            data = rng.randbytes(n)
            await h.pwrite(off, data)
            model[off:off + n] = data
            late.update(range(off // CHUNK, (off + n - 1) // CHUNK + 1))
    got, _ = await read_pool_copy(kind.crash_copy(tmp_path / "crash"), h.name, kind.remote)
    assert got is not None and len(got) == SIZE, f"{kind.id}: {h.name} missing in the copy"
    for c, (mine, before, after) in enumerate(zip(chunks_of(got), chunks_of(flushed),
                                                  chunks_of(model))):
        allowed = (before, after) if c in late else (before,)
        assert mine in allowed, f"{kind.id}: chunk {c} after the flush is neither " \
            f"{'the flushed nor the later state' if c in late else 'what was flushed'}"
    await h.close()


# -- bounds and refusals ----------------------------------------------------------------


@kinds()
async def test_requests_past_the_end_are_refused(kind):
    h = await kind.open(await kind.image())
    model = bytes(CONTENT)
    for what, off, n in PAST_END:
        if kind.refusals["read_past_end"] == "short":     # read(2) stops at end of file
            assert_same(await h.pread(off, n), model[off:off + n], f"{kind.id}: read {what}")
        else:
            with refused(kind, "read_past_end"):
                await h.pread(off, n)
    if not h.read_only:
        for what, off, n in PAST_END:
            with refused(kind, "write_past_end"):
                await h.pwrite(off, b"\xff" * n)
            if "trim_past_end" in kind.refusals:
                with refused(kind, "trim_past_end"):
                    await h.trim(off, n)
                with refused(kind, "zero_past_end"):
                    await h.zero(off, n)
    assert await h.size() == SIZE
    assert_same(await h.read_all(), model, f"{kind.id}: after refused requests")
    await h.close()


@kinds("read-only")
async def test_read_only_refusal(kind):
    h = await kind.open(await read_only_image(kind))
    assert h.read_only
    for off, n in [(0, 512), (CHUNK - 3, 10), (LAST, SIZE - LAST)]:
        with refused(kind, "read_only"):
            await h.pwrite(off, b"\xee" * n)
        for op in (lambda: h.trim(off, n), lambda: h.zero(off, n)):
            with contextlib.suppress(NotApplicable), refused(kind, "read_only"):
                await op()
    await h.flush()                                  # a flush of a read-only image is fine
    assert_same(await h.read_all(), CONTENT, f"{kind.id}: read-only image after refusals")
    await h.close()


# -- resize ---------------------------------------------------------------------------------


@kinds("writes", "resize")
async def test_resize(kind):
    h = await kind.open(await kind.image())
    model, rng = bytearray(CONTENT), random.Random(10)
    grown = SIZE + 2 * CHUNK + 1024
    await h.resize(grown)
    assert await h.size() == grown
    model += bytes(grown - SIZE)
    assert_same(await h.read_all(), model, f"{kind.id}: grown (old bytes kept, tail zeros)")
    await h.resize(SIZE + CHUNK)                    # nothing is stored beyond: a shrink
    assert await h.size() == SIZE + CHUNK
    assert_same(await h.read_all(), model[:SIZE + CHUNK], f"{kind.id}: shrunk over zeros")
    await h.resize(grown)
    data = rng.randbytes(200)                       # across the old end
    await h.pwrite(SIZE - 100, data)
    model[SIZE - 100:SIZE + 100] = data
    tail = rng.randbytes(CHUNK + 300)               # into the new last partial chunk
    await h.pwrite(grown - len(tail), tail)
    model[grown - len(tail):] = tail
    assert_same(await h.read_all(), model, f"{kind.id}: written after growing")
    with refused(kind, "shrink_over_data"):
        await h.resize(SIZE)
    assert await h.size() == grown
    assert_same(await h.read_all(), model, f"{kind.id}: after the refused shrink")
    cut = LAST - CHUNK + 512                        # inside a chunk, below the first size
    if await unsupported(lambda: h.trim(cut, grown - cut)):
        await h.close()                             # no trim (FUSE): stored data stays
        return
    model[cut:] = bytes(grown - cut)
    await h.resize(cut)
    assert await h.size() == cut
    assert_same(await h.read_all(), model[:cut], f"{kind.id}: shrunk after a trim")
    if kind.refusals["read_past_end"] != "short":
        with refused(kind, "read_past_end"):
            await h.pread(cut - 10, 20)
    with refused(kind, "write_past_end"):
        await h.pwrite(cut, b"x")
    await h.resize(grown)                           # nothing from before the shrink comes back
    assert_same(await h.read_all(), model, f"{kind.id}: shrunk and grown again")
    await h.close()


# -- snapshots of a volume being written ---------------------------------------------------


def in_flight_writes(rng, count=40):
    """Writes for the in-flight test: unaligned ones stay inside a chunk, the
    ones that span chunks are chunk-aligned (a FUSE write reaches the daemon
    as requests of up to 128 KiB cut from its start; NBD cuts streamed
    writes on chunk boundaries)."""
    writes = []
    for i in range(count):
        if i % 3 == 0:
            n = rng.randrange(1, CHUNK // 2)
            off = rng.randrange(0, NCHUNKS - 1) * CHUNK + rng.randrange(0, CHUNK - n)
        else:
            chunks = rng.choice([2, 5, 8, 20])
            off = rng.randrange(0, NCHUNKS - chunks) * CHUNK
            n = chunks * CHUNK
        buf = mmap.mmap(-1, n)              # page-aligned: FUSE cuts it on chunk boundaries
        buf.write(rng.randbytes(n))
        writes.append((off, buf))
    return writes


@kinds("writes")
async def test_snapshot_taken_while_writes_are_in_flight(kind):
    volume = await kind.image()
    h = await kind.open(volume)
    writes = in_flight_writes(random.Random(12))
    model = bytearray(CONTENT)
    states = [{c} for c in chunks_of(model)]          # each chunk's state after each prefix
    for off, data in writes:
        model[off:off + len(data)] = data
        for c in range(off // CHUNK, (off + len(data) - 1) // CHUNK + 1):
            states[c].add(bytes(model[c * CHUNK:(c + 1) * CHUNK]))
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.write_many, writes, started)
        await started.wait()
        snap_name = await kind.snapshot_volume(volume, "inflight")
    snap = await kind.open(snap_name)
    frozen = await snap.read_all()
    for c, chunk in enumerate(chunks_of(frozen)):
        assert chunk in states[c], f"{kind.id}: snapshot chunk {c} is no prefix of the writes"
    assert_same(await h.read_all(), model, f"{kind.id}: volume after the writes")
    await h.pwrite(0, content(13))                  # the volume moves on
    await h.flush()
    assert_same(await snap.read_all(), frozen, f"{kind.id}: snapshot after more writes")
    snap = await snap.reopen()
    assert_same(await snap.read_all(), frozen, f"{kind.id}: snapshot reopened")
    await snap.close()
    await h.close()


# -- close and reopen --------------------------------------------------------------------------


@kinds()
async def test_close_and_reopen(kind):
    h = await kind.open(await kind.image())
    model, rng = bytearray(CONTENT), random.Random(14)
    if not h.read_only:
        for off, n in [(5, 1000), (9 * CHUNK, 3 * CHUNK), (LAST - 10, SIZE - LAST + 10)]:
            data = rng.randbytes(n)
            await h.pwrite(off, data)
            model[off:off + n] = data
        await h.flush()
    h = await h.reopen()
    assert await h.size() == SIZE
    assert_same(await h.read_all(), model, f"{kind.id}: reopened")
    await h.close()


# -- deletion while open (the image lifecycle) ----------------------------------------------

TARGETS = [("volume", "volume"), ("snapshot", "snapshot"),
           ("device", "volume"), ("device", "snapshot"),
           ("fuse", "volume"), ("fuse", "snapshot"),
           ("nbd", "volume"), ("nbd", "snapshot"),
           ("pulled", "volume"), ("pulled", "snapshot")]
by_target = pytest.mark.parametrize("kind,target", TARGETS, indirect=["kind"],
                                    ids=[f"{k}-{t}" for k, t in TARGETS])


async def deletion_target(kind, target):
    """A volume holding CONTENT, or a snapshot of one whose volume was then
    overwritten whole, so that the snapshot owns its slots alone."""
    volume = new_name()
    await kind.make(volume)
    if target == "volume":
        return volume
    snap = await kind.snapshot_volume(volume, "s")
    h = await kind.open(volume)
    await h.pwrite(0, content(2))
    await h.flush()
    await h.close()
    return snap


def engine_image(kind, h):
    return getattr(h, "image", None) if kind.id in ("volume", "snapshot") else None


@by_target
async def test_plain_delete_of_an_open_image_is_refused(kind, target):
    name = await deletion_target(kind, target)
    h = await kind.open_held(name)
    assert_same(await h.read_all(SIZE), CONTENT, f"{kind.id}: {name} before the delete")
    with refused(kind, "busy") as info:
        await kind.delete(name)
    message = info.value.message
    if kind.id == "fuse":            # rm gets an errno only: the verb's error names the holder
        with pytest.raises(Refused) as info:
            await kind.delete_through_control(name)
        assert info.value.code == "Busy"
        message = info.value.message
    assert kind.holder_text in message, message
    assert await kind.listed(name)
    assert_same(await h.read_all(SIZE), CONTENT, f"{kind.id}: {name} after the refused delete")
    other = await kind.open(name)
    assert_same(await other.read_all(), CONTENT, f"{kind.id}: {name} opened again")
    await other.close()
    await h.close()
    await wait_for(lambda: deleted(kind, name), f"{name} deleted once closed", timeout=20)


async def deleted(kind, name):
    """Try a plain delete; True once it goes through (holders may let go late)."""
    try:
        await kind.delete(name)
    except Refused as exc:
        if exc.code != kind.refusals["busy"]:
            raise
        return False
    return not await kind.listed(name)


@by_target
async def test_deferred_delete_of_an_open_image_keeps_its_own_bytes(kind, target):
    name = await deletion_target(kind, target)
    h = await kind.open_held(name)
    own = await h.read_all(SIZE)
    assert_same(own, CONTENT, f"{kind.id}: {name} before the delete")
    exclusive = await kind.exclusive_bytes(name)
    await kind.delete(name, defer=True)
    assert not await kind.listed(name)
    with refused(kind, "gone"):
        await kind.lookup(name)
    image = engine_image(kind, h)
    if image is not None:
        assert image.state == "deleting" and image.holders == collections.Counter({HOLDER: 1})
    with trio.fail_after(30):
        assert_same(await h.read_all(SIZE), own, f"{kind.id}: {name} deleting, through its holder")
        secret = new_name("w")
        await kind.make(secret, SECRET * (SIZE // len(SECRET)))
        assert_same(await h.read_all(SIZE), own,
                    f"{kind.id}: {name} deleting, after {secret} was filled with a secret")
    used = await kind.used_bytes()
    await h.close()

    async def freed():
        return await kind.used_bytes() <= used - exclusive
    await wait_for(freed, f"the space of {name} ({exclusive} bytes) freed once closed")
    if image is not None:
        assert image.state == "freed" and not image.holders
    assert not await kind.listed(name)


@by_target
async def test_deferred_delete_is_finished_by_the_next_open_after_a_crash(kind, target,
                                                                        tmp_path):
    name = await deletion_target(kind, target)
    h = await kind.open_held(name)
    own = await h.read_all(SIZE)
    exclusive = await kind.exclusive_bytes(name)
    used = await kind.used_bytes()
    await kind.delete(name, defer=True)
    got, used_after = await read_pool_copy(kind.crash_copy(tmp_path / "crash"), name,
                                           kind.remote)
    assert got is None, f"{kind.id}: deleting {name} is back after the crash"
    assert used_after <= used - exclusive, f"{kind.id}: {name}'s slots are not freed"
    assert_same(await h.read_all(SIZE), own, f"{kind.id}: {name}, its holder after the copy")
    await h.close()
