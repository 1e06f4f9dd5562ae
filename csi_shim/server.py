"""`rokfs-csi`: the CSI driver, a gRPC server on a unix socket translating CSI
calls into the rokfs daemon's control API (rokfs.client.Client).

    rokfs-csi --endpoint unix:///csi/csi.sock --rokfs unix:///run/rokfs/control.sock \
              --node-id NODE [--nbd unix:///run/rokfs/nbd.sock]

Invariants:
- It keeps no state of its own: volumes and snapshots live in the daemon,
  attachments in the node's mount table and loop devices.
- It ends as every rokfs program does (rokfs.exits): one line per error,
  the exit code of its row in rokfs.errors.ERRORS, never a traceback.
"""

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures

import grpc

from rokfs import paths
from rokfs.args import add_version_argument
from rokfs.client import Client
from rokfs.endpoints import claim_unix_socket
from rokfs.errors import exit_code_help
from rokfs.exits import run_program

from . import attach, csi_pb2_grpc
from .controller import ControllerServicer
from .group_controller import GroupControllerServicer
from .identity import IdentityServicer
from .node import NodeServicer

TOPOLOGY_KEY = "topology.rokfs.dev/node"
log = logging.getLogger("csi_shim")


def unix_path(address):
    """'unix:///a/b' or 'unix:/a/b' or '/a/b' -> '/a/b'."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix):]
    return address


def build_parser():
    p = argparse.ArgumentParser(prog="rokfs-csi", description=__doc__.splitlines()[0],
                                epilog=exit_code_help())
    add_version_argument(p)
    p.add_argument("--endpoint", default=f"unix://{paths.CSI_SOCKET}",
                   help="CSI socket to serve (default: %(default)s)")
    p.add_argument("--rokfs", default=f"unix://{paths.control_socket()}",
                   help="the rokfs daemon's control socket (env ROKFS_CONTROL; "
                        "default: %(default)s)")
    p.add_argument("--nbd", default=f"unix://{paths.nbd_socket()}",
                   help="the rokfs daemon's NBD socket (env ROKFS_NBD_SOCKET; "
                        "default: %(default)s)")
    p.add_argument("--node-id", required=True, help="this node's name (the CSI node id)")
    p.add_argument("--state-dir", default="/run/rokfs-csi",
                   help="per-volume attach state (default: %(default)s)")
    p.add_argument("--attach", choices=("auto", "kernel", "nbdfuse"), default="auto",
                   help="kernel nbd (nbd-client) or nbdfuse+loop (default: kernel if "
                        "/dev/nbd* exists)")
    p.add_argument("--topology-key", default=TOPOLOGY_KEY,
                   help="topology segment naming this node (default: %(default)s)")
    p.add_argument("--max-volumes", type=int, default=0,
                   help="volumes this node may attach (0: no limit)")
    p.add_argument("--expand-on-node", action="store_true",
                   help="leave EXPAND_VOLUME out of the controller capabilities: volumes "
                        "grow in NodeExpandVolume on their node (see docs/csi.md)")
    p.add_argument("--workers", type=int, default=8, help="concurrent CSI calls")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def make_server(client, args):
    attacher = attach.choose(args.state_dir, unix_path(args.nbd),
                             None if args.attach == "auto" else args.attach)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(client), server)
    csi_pb2_grpc.add_ControllerServicer_to_server(
        ControllerServicer(client, args.node_id, args.topology_key, args.expand_on_node),
        server)
    csi_pb2_grpc.add_GroupControllerServicer_to_server(GroupControllerServicer(client), server)
    csi_pb2_grpc.add_NodeServicer_to_server(
        NodeServicer(client, attacher, args.node_id, args.topology_key, args.max_volumes),
        server)
    path = unix_path(args.endpoint)
    claim_unix_socket(path, "CSI")
    server.add_insecure_port(f"unix://{path}")
    log.info("event=start endpoint=%s rokfs=%s nbd=%s attach=%s node=%s", path, args.rokfs,
             args.nbd, attacher.kind, args.node_id)
    return server


def main(argv=None):
    return run_program("rokfs-csi", lambda: serve(argv))


def serve(argv):
    """Serve CSI until SIGTERM or SIGINT; errors end the program (rokfs.exits)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = make_server(Client(args.rokfs), args)
    server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"rokfs-csi: serving CSI on {args.endpoint} for node {args.node_id}", flush=True)
    stop.wait()
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
