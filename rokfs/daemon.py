"""`rokfs serve`: one trio process serving a pool over NBD, FUSE, the gRPC
control API and Prometheus metrics until SIGTERM/SIGINT.

Invariants:
- The configuration (rokfs.config) is loaded and checked, and the FUSE
  mountpoint and NBD TLS files are checked, before the pool is opened: a
  bad setting is refused with nothing started and nothing created.
- The policy runner (rokfs.policies) runs beside the hydrators, on the
  daemon's loop, for as long as the services do.
- The pool is opened, run and closed by the one run sequence
  (rokfs.runner.run_with_pool); this module only starts the services, each
  with nursery.start() so that it reports its bound address, and prints
  where they are. A signal cancels them (sockets removed, FUSE unmounted);
  the run sequence then flushes and closes the pool.
"""

import functools
import os

import trio

from nbd_server.server import serve as serve_nbd
from nbd_server.tls import tls_config

from . import config as configuration, logs, paths
from .errors import InvalidArgument
from .fusefs import check_mountpoint, mount
from .metrics import serve_metrics
from .policies import PolicyRunner
from .rpc import serve_control
from .runner import run_with_pool


def add_arguments(parser, name="serve"):
    parser.add_argument("--config", metavar="FILE", help="TOML config (see docs/daemon.md)")
    for section, key, env, dest, _ in configuration.SETTINGS:
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, metavar=key.upper(),
                            help=f"[{section}] {key} (env {env})")
    parser.set_defaults(run=run)


def run(args):
    cfg = configuration.load(args.config, flags=args)
    logs.setup(cfg["log"]["level"], cfg["log"]["format"])
    if cfg["fuse"]["mountpoint"]:
        check_mountpoint(os.path.abspath(cfg["fuse"]["mountpoint"]))  # stale/busy: say so first
    tls = nbd_tls(cfg["nbd"])
    run_with_pool(cfg["pool"]["path"], serve, cfg, tls, remotes=cfg["remotes"],
                  chunk_size=cfg["pool"]["chunk_size"], reserve=cfg["pool"]["reserve"])
    return 0


def nbd_tls(nbd):
    try:
        return tls_config(nbd["tls"], nbd["tls_cert"] or None, nbd["tls_key"] or None,
                          nbd["tls_ca"] or None)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"NBD TLS: {exc}") from None


async def serve(control, cfg, tls):
    """Start every configured service; they run until cancelled."""
    bound = {}
    async with trio.open_nursery() as nursery:
        nbd = cfg["nbd"]
        if nbd["socket"] or nbd["listen"]:
            bound["nbd"] = await nursery.start(functools.partial(
                serve_nbd, control, socket_path=nbd["socket"] or None,
                listen=nbd["listen"] or None, tls=tls))
        if cfg["fuse"]["mountpoint"]:
            bound["fuse"] = await nursery.start(functools.partial(
                mount, control, cfg["fuse"]["mountpoint"], workers=cfg["fuse"]["workers"]))
        c = cfg["control"]
        bound["control"] = await nursery.start(functools.partial(
            serve_control, control, c["socket"], mode=c["mode"], group=c["group"] or None))
        if cfg["metrics"]["listen"]:
            bound["metrics"] = await nursery.start(serve_metrics, control,
                                                   cfg["metrics"]["listen"])
        control.registry_poll = cfg["registry"]["poll"]
        await nursery.start(control.run_background)     # hydrators, registry subscriptions
        await nursery.start(PolicyRunner(control).run)   # schedules and retention
        print(welcome(cfg, bound), flush=True)


def welcome(cfg, bound):
    """How to use what is now served, for the terminal."""
    ctl = bound["control"]
    rokctl = "rokctl" if ctl == paths.control_socket() else f"rokctl --socket {ctl}"
    lines = [f"rokfs: serving pool {cfg['pool']['path']}",
             f"  control  {ctl}",
             f"           try:  {rokctl} volume create data --size 10G",
             f"                 {rokctl} snapshot create data@before --label run=1",
             f"                 {rokctl} status"]
    lines += _nbd_lines(cfg["nbd"]["socket"], bound.get("nbd", ()))
    lines += _fuse_lines(cfg["fuse"]["mountpoint"])
    if "metrics" in bound:
        lines.append("  metrics  http://%s:%d/metrics" % tuple(bound["metrics"]))
    lines.append("  stop with Ctrl-C or SIGTERM: flushes and closes the pool")
    return "\n".join(lines)


def _nbd_lines(sock, addresses):
    lines = []
    if sock:
        uri = f"nbd+unix:///data?socket={sock}"
        lines += [f"  NBD      nbd+unix:///VOLUME?socket={sock}",
                  f"           list:  nbdinfo --list 'nbd+unix:///?socket={sock}'",
                  f"           mount: mkdir -p /tmp/data && nbdfuse /tmp/data '{uri}' &",
                  "                  mkfs.ext4 /tmp/data/nbd && mount -o loop /tmp/data/nbd /mnt"]
    for addr in (a for a in addresses if isinstance(a, tuple)):
        lines.append(f"  NBD      nbd://{addr[0]}:{addr[1]}/VOLUME")
    return lines


def _fuse_lines(mnt):
    if not mnt:
        return ["  FUSE     off (rokfs serve --mount ~/rok for the workstation view)"]
    return [f"  FUSE     {mnt}/volumes/NAME (images), {mnt}/snapshots/NAME/SNAP",
            f"           snapshot:  setfattr -n user.rokfs.snapshot -v before "
            f"{mnt}/volumes/data"]
