"""The gRPC layer in process: every error class crosses the wire and comes back
as itself, and a streaming verb's progress reaches the client. The remote verbs
are not on this branch, so a Control subclass adds stand-ins named like them;
the real ones run in tests/test_rokctl.py once merged."""

import functools

import grpc
import pytest
import trio

from rokfs import errors, rpc
from rokfs.client import Client
from rokfs.control import Control
from rokfs.errors import exit_code

ALL_ERRORS = [kind.cls for kind in errors.ERRORS]


class StandIn(Control):
    push_cancelled = False

    async def push(self, full_name, *, remote="default", progress=None):
        if full_name == "data@slow":
            try:
                await trio.sleep(30)
            except trio.Cancelled:
                self.push_cancelled = True
                raise
        snap = self.pool.get_snapshot(full_name)
        total = snap.size
        for done in range(0, total + 1, total // 4):
            progress(done, total)
            await trio.sleep(0.01)
        return {"snapshot": full_name, "remote": remote, "chunks": 4}

    def hydration_status(self, volume):
        cls = getattr(errors, volume.replace("-", ""), None)
        if cls is not None:
            raise cls(f"stand-in {cls.__name__}")
        if volume == "crash":
            raise ZeroDivisionError("bug")
        return {"volume": volume, "state": "hydrated"}


async def with_service(pool, tmp_path, body, control=None):
    control = control or StandIn(pool)
    sock = str(tmp_path / "ctl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(rpc.serve_control, control, sock))
        try:
            return await trio.to_thread.run_sync(body, Client(sock))
        finally:
            nursery.cancel_scope.cancel()


async def test_every_error_class_round_trips(pool, tmp_path):
    def body(client):
        raised = {}
        for cls in ALL_ERRORS:
            with pytest.raises(errors.RokfsError) as info:
                client.hydration_status(cls.__name__)
            raised[cls] = info.value
        with pytest.raises(errors.RokfsError, match="internal error") as info:
            client.hydration_status("crash")
        raised["crash"] = info.value
        return raised

    raised = await with_service(pool, tmp_path, body)
    for cls in ALL_ERRORS:
        assert type(raised[cls]) is cls and "stand-in" in str(raised[cls])
        assert raised[cls].errno == cls.errno
    assert type(raised["crash"]) is errors.RokfsError
    assert exit_code(raised[errors.NotFound]) == 3
    assert exit_code(raised[errors.OutOfRange]) == 2


def test_status_codes_are_mapped_once():
    import grpc
    assert rpc.status_of(errors.ReadOnly("x"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc.status_of(errors.RemoteError("x"))[0] == grpc.StatusCode.UNAVAILABLE
    assert rpc.status_of(errors.NoSpace("x"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc.status_of(ValueError("x"))[0] == grpc.StatusCode.INTERNAL


async def test_push_streams_progress(pool, tmp_path):
    pool.create_volume("data", 1 << 20)
    pool.create_snapshot("data@a")

    def body(client):
        seen = []
        result = client.push("data@a", progress=lambda d, t: seen.append((d, t)))
        return seen, result

    seen, result = await with_service(pool, tmp_path, body)
    assert result == {"snapshot": "data@a", "remote": "default", "chunks": 4}
    assert seen[0] == (0, 1 << 20) and seen[-1] == (1 << 20, 1 << 20) and len(seen) == 5


async def test_streaming_errors_and_bad_arguments(pool, tmp_path):
    def body(client):
        with pytest.raises(errors.NotFound):
            client.push("data@missing")
        with pytest.raises(errors.InvalidArgument, match="unknown argument"):
            client.call("push", full_name="a@b", bogus=1)
        with pytest.raises(errors.InvalidArgument, match="missing"):
            client.call("volume_info")
        with pytest.raises(errors.InvalidArgument, match="unknown verb"):
            client.call("no_such_verb")
        # a method the daemon does not have (a newer client, say): UNIMPLEMENTED
        raw = client._channel.unary_unary(f"/{rpc.SERVICE}/NoSuchVerb")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"", timeout=10)
        assert isinstance(rpc.error_from(info.value), errors.Unsupported)

    await with_service(pool, tmp_path, body)


async def test_control_socket_mode_and_group(pool, tmp_path):
    import grp
    import os
    sock = str(tmp_path / "g.sock")
    group = grp.getgrgid(os.getgid()).gr_name
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(rpc.serve_control, Control(pool), sock,
                                              mode=0o660, group=group))
        st = os.stat(sock)
        assert st.st_mode & 0o777 == 0o660 and st.st_gid == os.getgid()
        nursery.cancel_scope.cancel()
    assert not os.path.exists(sock)
    with pytest.raises(errors.InvalidArgument, match="no group named"):
        await rpc.serve_control(Control(pool), sock, group="no-such-group-xyz")
    assert not os.path.exists(sock)


async def test_rokctl_push_shows_a_progress_bar(pool, tmp_path):
    import contextlib
    import io
    import json
    from rokfs import rokctl
    pool.create_volume("data", 1 << 20)
    pool.create_snapshot("data@a")

    def body(client):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = rokctl.main(["--socket", client.address, "push", "data@a", "--progress",
                              "-o", "json"])
        return rc, out.getvalue(), err.getvalue()

    rc, out, err = await with_service(pool, tmp_path, body)
    assert rc == 0 and json.loads(out)["snapshot"] == "data@a"
    assert "push data@a [" in err and "100.0%" in err and "1M/1M" in err and "ETA" in err


async def test_a_client_that_goes_away_cancels_its_push(pool, tmp_path):
    import time
    control = StandIn(pool)

    def body(client):
        with pytest.raises(errors.RokfsError):
            Client(client.address, timeout=0.3).push("data@slow")
        deadline = time.monotonic() + 5
        while not control.push_cancelled and time.monotonic() < deadline:
            time.sleep(0.05)

    await with_service(pool, tmp_path, body, control)
    assert control.push_cancelled


async def test_a_job_is_named_first_and_listed(pool, tmp_path):
    pool.create_volume("data", 1 << 20)
    pool.create_snapshot("data@a")
    control = Control(pool)         # the default remote: a directory beside the pool

    class Progress:
        def __init__(self):
            self.seen = []

        def on_job(self, info):
            self.seen.append(("job", info["kind"], info["target"], info["state"]))

        def __call__(self, done, total):
            self.seen.append(("progress", total))

    def body(client):
        progress = Progress()
        result = client.push("data@a", progress=progress)
        with pytest.raises(errors.Unsupported, match="detached jobs run only in a daemon"):
            client.push("data@a", detach=True)       # no background tasks in this service
        return progress.seen, result, client.list_jobs()

    seen, result, jobs = await with_service(pool, tmp_path, body, control)
    assert seen[0] == ("job", "push", "data@a", "running")
    assert seen[1:] and all(s == ("progress", 1 << 20) for s in seen[1:])
    assert result["snapshot"] == "data@a"
    assert [(j["kind"], j["state"], j["result"]) for j in jobs] == [("push", "succeeded", result)]
