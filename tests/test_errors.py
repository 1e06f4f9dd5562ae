"""Acceptance 4 (the table): every error class's errno, NBD error, gRPC status,
CSI status and exit code come from the one list, rokfs.errors.ERRORS, at
every boundary: the FUSE view, the NBD server, the control API, the CSI
driver, and the rokctl and rokfs programs."""

import contextlib
import io

import grpc
import pytest

import nbd_server.constants as nbd
from csi_shim import errors as csi_errors
from rokfs import cli, errors, rokctl, rpc
from rokfs.exits import run_program

KINDS = errors.ERRORS
ids = [kind.cls.__name__ for kind in KINDS]


def test_every_error_class_has_one_row_and_no_row_is_shadowed():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.RokfsError)]
    assert sorted(c.__name__ for c in classes) == sorted(ids)
    for i, kind in enumerate(KINDS):
        earlier = [k.cls for k in KINDS[:i]]
        assert not any(issubclass(kind.cls, cls) for cls in earlier), kind.cls
    assert KINDS[-1].cls is errors.RokfsError


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_the_errno_is_the_rows(kind):
    assert kind.cls.errno == kind.errno == kind.cls("x").errno


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_fuse_answers_the_rows_errno(kind):
    from rokfs.fusefs.ops import to_fuse_error
    assert to_fuse_error(kind.cls("x"), "test").errno == kind.errno


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_nbd_answers_the_rows_nbd_error(kind):
    assert nbd.nbd_error(kind.cls("x").errno) == nbd.NBD_ERRORS[kind.nbd]


def test_an_errno_means_one_nbd_error():
    for errno in {kind.errno for kind in KINDS}:
        assert len({kind.nbd for kind in KINDS if kind.errno == errno}) == 1, errno


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_the_control_api_answers_the_rows_grpc_status(kind):
    code, message, meta = rpc.status_of(kind.cls("boom"))
    assert code == getattr(grpc.StatusCode, kind.grpc) and message == "boom"
    assert dict(meta) == {"rokfs-error": kind.cls.__name__, "rokfs-errno": str(kind.errno)}


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_the_csi_driver_answers_the_rows_csi_status(kind):
    assert csi_errors.status_of(kind.cls("boom")) == (getattr(grpc.StatusCode, kind.csi), "boom")


def test_a_bug_is_internal_and_exit_1():
    assert rpc.status_of(ValueError("x"))[0] == grpc.StatusCode.INTERNAL
    assert csi_errors.status_of(ValueError("x"))[0] == grpc.StatusCode.INTERNAL
    assert errors.exit_code(ValueError("x")) == 1


class Failing:
    """A client (for rokctl) whose every verb raises `error`."""

    def __init__(self, error):
        self.error = error

    def __call__(self, socket):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, verb):
        def fail(*args, **kwargs):
            raise self.error
        return fail


def run_captured(main, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_rokctl_exits_with_the_rows_code(kind, monkeypatch):
    monkeypatch.setattr(rokctl, "Client", Failing(kind.cls("it failed\nthis way")))
    code, err = run_captured(rokctl.main, ["status"])
    assert code == kind.exit
    assert err == "rokctl: error: it failed this way\n"          # one line


@pytest.mark.parametrize("kind", KINDS, ids=ids)
def test_rokfs_exits_with_the_rows_code(kind, monkeypatch, tmp_path):
    def run_with_pool(*args, **kwargs):
        raise ExceptionGroup("services", [kind.cls("it failed")])   # as a nursery would
    monkeypatch.setattr(cli, "run_with_pool", run_with_pool)
    code, err = run_captured(cli.main, ["status", "--pool", str(tmp_path)])
    assert code == kind.exit and err == "rokfs: error: it failed\n"


def test_every_exit_code_is_explained_in_the_help():
    assert set(errors.EXIT_MEANINGS) == {kind.exit for kind in KINDS} | {0, 130}
    help_text = errors.exit_code_help()
    for code, meaning in errors.EXIT_MEANINGS.items():
        assert f"{code} {meaning}" in help_text


def test_programs_end_without_a_traceback():
    def bug():
        raise ZeroDivisionError("oops")
    code, err = run_captured(lambda argv: run_program("prog", bug), [])
    assert code == 1 and err.count("\n") == 1 and "prog: internal error: ZeroDivisionError" in err

    def interrupted():
        raise KeyboardInterrupt
    code, err = run_captured(lambda argv: run_program("prog", interrupted), [])
    assert code == 130 and err == "prog: interrupted\n"
