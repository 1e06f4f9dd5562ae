"""`rokfs serve`: one trio process serving a pool over NBD, FUSE, the gRPC
control API and Prometheus metrics until SIGTERM/SIGINT, then flushing and
closing it.

This is the wiring module: it loads the config (rokfs.config), opens the
pool, builds the one Control, and starts each service with nursery.start()
so that it reports its bound address. Shutdown cancels the services (each
stops accepting and cleans up: sockets removed, FUSE unmounted), then the
pool gets a last commit and is closed.
"""

import functools
import logging
import os
import signal

import trio

from . import config as configuration, logs
from .control import Control
from .errors import Busy, InvalidArgument, RokfsError, from_os_error
from .pool import Pool
from .units import parse_size

log = logging.getLogger("rokfs.daemon")
default_runtime_dir = configuration.runtime_dir


def add_parser(sub):
    p = sub.add_parser("serve", help="run the daemon: NBD, FUSE, control API, metrics")
    p.add_argument("--config", metavar="FILE", help="TOML config (see docs/daemon.md)")
    for section, key, env, dest in configuration.SETTINGS:
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, metavar=key.upper(),
                       help=f"[{section}] {key} (env {env})")
    p.set_defaults(func=run_cli)


def run_cli(args):
    cfg = configuration.load(args.config, flags=args)
    logs.setup(cfg["log"]["level"], cfg["log"]["format"])
    if cfg["fuse"]["mountpoint"]:
        from .fusefs import check_mountpoint
        check_mountpoint(os.path.abspath(cfg["fuse"]["mountpoint"]))  # stale/busy: say so first
    try:
        pool = Pool.open_or_create(cfg["pool"]["path"], parse_size(cfg["pool"]["chunk_size"]))
    except Busy as exc:
        raise Busy(f"{exc}: another rokfs daemon already serves this pool "
                   "(stop it first, or talk to it with rokctl)") from None
    try:
        control = Control(pool, remotes=open_remotes(cfg["remotes"]))
        trio.run(serve, control, cfg)
    except BaseExceptionGroup as group:     # a service failed to start: say why, plainly
        first = _first_leaf(group)
        if isinstance(first, OSError):
            raise from_os_error(first, "cannot start") from None
        raise first if isinstance(first, RokfsError) else group
    finally:
        pool.close()
    log.info("event=stopped pool=%s", pool.path)
    return 0


def _first_leaf(exc):
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def open_remotes(specs):
    try:
        from .remote import open_remote
    except ModuleNotFoundError as exc:
        log.warning("event=no_remote_store reason=%r", str(exc))
        return {}
    return {name: open_remote(spec) for name, spec in specs.items()}


async def serve(control, cfg, *, task_status=trio.TASK_STATUS_IGNORED):
    from .metrics import serve_metrics
    from .rpc import serve_control
    bound = {}
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if cfg["nbd"]["socket"] or cfg["nbd"]["listen"]:
                bound["nbd"] = await nursery.start(_serve_nbd, control, cfg["nbd"])
            if cfg["fuse"]["mountpoint"]:
                from .fusefs import mount
                bound["fuse"] = await nursery.start(functools.partial(
                    mount, control, cfg["fuse"]["mountpoint"]))
            c = cfg["control"]
            bound["control"] = await nursery.start(functools.partial(
                serve_control, control, c["socket"], mode=c["mode"], group=c["group"] or None))
            if cfg["metrics"]["listen"]:
                bound["metrics"] = await nursery.start(serve_metrics, control,
                                                       cfg["metrics"]["listen"])
            await nursery.start(control.run_background)     # hydrators of pulled volumes
            _print_welcome(control, cfg, bound)
            task_status.started(bound)
            async for signum in signals:
                log.info("event=shutdown signal=%s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    await control.flush()


async def _serve_nbd(control, nbd, *, task_status=trio.TASK_STATUS_IGNORED):
    from nbd_server.server import serve as serve_nbd
    from nbd_server.tls import tls_config
    try:
        tls = tls_config(nbd["tls"], nbd["tls_cert"] or None, nbd["tls_key"] or None,
                         nbd["tls_ca"] or None)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"NBD TLS: {exc}") from None
    if nbd["socket"]:
        os.makedirs(os.path.dirname(os.path.abspath(nbd["socket"])), mode=0o755, exist_ok=True)
    await serve_nbd(control, socket_path=nbd["socket"] or None,
                    listen=nbd["listen"] or None, tls=tls, task_status=task_status)


def _print_welcome(control, cfg, bound):
    sock, ctl, mnt = cfg["nbd"]["socket"], bound["control"], cfg["fuse"]["mountpoint"]
    rokctl = "rokctl" if ctl == configuration.defaults()["control"]["socket"] \
        else f"rokctl --socket {ctl}"
    lines = [f"rokfs: serving pool {control.pool.path}",
             f"  control  {ctl}",
             f"           try:  {rokctl} volume create data --size 10G",
             f"                 {rokctl} snapshot create data@before --label run=1",
             f"                 {rokctl} status"]
    if sock:
        uri = f"nbd+unix:///data?socket={sock}"
        lines += [f"  NBD      nbd+unix:///VOLUME?socket={sock}",
                  f"           list:  nbdinfo --list 'nbd+unix:///?socket={sock}'",
                  f"           mount: mkdir -p /tmp/data && nbdfuse /tmp/data '{uri}' &",
                  "                  mkfs.ext4 /tmp/data/nbd && mount -o loop /tmp/data/nbd /mnt"]
    for addr in (a for a in bound.get("nbd", ()) if isinstance(a, tuple)):
        lines.append(f"  NBD      nbd://{addr[0]}:{addr[1]}/VOLUME")
    if mnt:
        lines += [f"  FUSE     {mnt}/volumes/NAME (images), {mnt}/snapshots/NAME/SNAP",
                  f"           snapshot:  setfattr -n user.rokfs.snapshot -v before "
                  f"{mnt}/volumes/data"]
    else:
        lines.append("  FUSE     off (rokfs serve --mount ~/rok for the workstation view)")
    if "metrics" in bound:
        lines.append("  metrics  http://%s:%d/metrics" % tuple(bound["metrics"]))
    lines.append("  stop with Ctrl-C or SIGTERM: flushes and closes the pool")
    print("\n".join(lines), flush=True)
