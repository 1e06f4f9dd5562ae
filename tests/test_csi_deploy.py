"""The Kubernetes manifests in deploy/kubernetes cannot be applied here; this
keeps them consistent: they parse, name one driver everywhere, give every
sidecar the socket rokfs-csi serves, and pass arguments our own parsers accept."""

import os
import shlex

import pytest

yaml = pytest.importorskip("yaml")

from csi_shim.identity import DRIVER_NAME  # noqa: E402
from csi_shim.server import build_parser as csi_parser, unix_path  # noqa: E402
from rokfs.cli import build_parser as rokfs_parser  # noqa: E402

DEPLOY = os.path.join(os.path.dirname(__file__), "..", "deploy", "kubernetes")


def load_all():
    docs = []
    for name in sorted(os.listdir(DEPLOY)):
        with open(os.path.join(DEPLOY, name)) as f:
            docs += [(name, d) for d in yaml.safe_load_all(f) if d]
    return docs


@pytest.fixture(scope="module")
def objects():
    return {(d["kind"], d["metadata"]["name"]): d for name, d in load_all()
            if name != "kustomization.yaml"}


@pytest.fixture(scope="module")
def node(objects):
    return objects[("DaemonSet", "rokfs-node")]["spec"]["template"]["spec"]


def containers(node):
    return {c["name"]: c for c in node["containers"]}


def args_of(container):
    env = {"NODE_NAME": "node-1"}
    return [a.replace("$(NODE_NAME)", env["NODE_NAME"]) for a in container.get("args", [])]


def flag(container, name):
    for arg in container.get("args", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def test_kustomization_lists_every_manifest():
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f)["resources"])
    assert listed == {n for n in os.listdir(DEPLOY) if n != "kustomization.yaml"}


def test_expected_objects(objects):
    for kind, name in [("CSIDriver", DRIVER_NAME), ("DaemonSet", "rokfs-node"),
                       ("StorageClass", "rokfs"), ("VolumeSnapshotClass", "rokfs"),
                       ("VolumeGroupSnapshotClass", "rokfs"),
                       ("ServiceAccount", "rokfs-csi"), ("Namespace", "rokfs-system"),
                       ("ClusterRole", "rokfs-csi-provisioner"),
                       ("ClusterRole", "rokfs-csi-snapshotter"),
                       ("ClusterRole", "rokfs-csi-resizer")]:
        assert (kind, name) in objects, (kind, name)


def test_one_driver_name_everywhere(objects, node):
    assert objects[("StorageClass", "rokfs")]["provisioner"] == DRIVER_NAME
    assert objects[("VolumeSnapshotClass", "rokfs")]["driver"] == DRIVER_NAME
    assert objects[("VolumeGroupSnapshotClass", "rokfs")]["driver"] == DRIVER_NAME
    registrar = containers(node)["node-driver-registrar"]
    assert flag(registrar, "kubelet-registration-path") == \
        f"/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock"
    socket_dir = {v["name"]: v for v in node["volumes"]}["socket-dir"]["hostPath"]["path"]
    assert socket_dir == f"/var/lib/kubelet/plugins/{DRIVER_NAME}"
    driver = objects[("CSIDriver", DRIVER_NAME)]["spec"]
    assert driver["attachRequired"] is False          # rokfs-csi has no ControllerPublish


def test_rokfs_csi_and_sidecars_share_the_socket(node):
    c = containers(node)
    csi_args = csi_parser().parse_args(args_of(c["rokfs-csi"]))
    assert csi_args.node_id == "node-1" and csi_args.expand_on_node
    endpoint = unix_path(csi_args.endpoint)
    mounts = {m["name"]: m["mountPath"] for m in c["rokfs-csi"]["volumeMounts"]}
    assert os.path.dirname(endpoint) == mounts["socket-dir"]
    for name in ("node-driver-registrar", "csi-provisioner", "csi-snapshotter", "csi-resizer"):
        assert flag(c[name], "csi-address") == endpoint, name
        sidecar_mounts = {m["name"]: m["mountPath"] for m in c[name]["volumeMounts"]}
        assert sidecar_mounts["socket-dir"] == mounts["socket-dir"], name
    kubelet = [m for m in c["rokfs-csi"]["volumeMounts"] if m["name"] == "kubelet-dir"][0]
    assert kubelet["mountPropagation"] == "Bidirectional"
    assert c["rokfs-csi"]["securityContext"]["privileged"] is True


def test_rokfs_daemon_and_driver_agree_on_sockets(node):
    c = containers(node)
    serve = rokfs_parser().parse_args([*c["rokfs"]["command"][1:], *args_of(c["rokfs"])])
    csi_args = csi_parser().parse_args(args_of(c["rokfs-csi"]))
    assert unix_path(csi_args.rokfs) == serve.control_socket
    assert unix_path(csi_args.nbd) == serve.nbd_socket
    run_dir = {m["name"]: m["mountPath"] for m in c["rokfs"]["volumeMounts"]}["rokfs-run"]
    assert os.path.dirname(serve.control_socket) == run_dir
    assert {m["name"]: m["mountPath"] for m in c["rokfs-csi"]["volumeMounts"]}["rokfs-run"] \
        == run_dir


def test_per_node_controller_sidecars(node, objects):
    c = containers(node)
    for name in ("csi-provisioner", "csi-snapshotter"):
        assert flag(c[name], "node-deployment") == "true", name
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c[name]["env"]}
        assert env["NODE_NAME"] == "spec.nodeName", name
    assert flag(c["csi-snapshotter"], "leader-election") == "false"
    # the one cluster-wide resizer needs leader election and must not call the
    # driver's ControllerExpandVolume (rokfs-csi --expand-on-node)
    assert flag(c["csi-resizer"], "leader-election") == "true"
    sc = objects[("StorageClass", "rokfs")]
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"   # per-node provisioning needs it
    assert sc["allowVolumeExpansion"] is True


def test_rbac_covers_the_sidecars(objects, node):
    assert node["serviceAccountName"] == "rokfs-csi"
    bound = {d["roleRef"]["name"] for (kind, _), d in objects.items()
             if kind in ("ClusterRoleBinding", "RoleBinding")
             and any(s["name"] == "rokfs-csi" for s in d["subjects"])}
    assert {"rokfs-csi-provisioner", "rokfs-csi-snapshotter", "rokfs-csi-resizer",
            "rokfs-csi-leader-election"} <= bound

    def allows(role, resource, verb, group=None):
        return any(resource in r["resources"] and verb in r["verbs"]
                   and (group is None or group in r["apiGroups"])
                   for r in objects[role]["rules"])
    assert allows(("ClusterRole", "rokfs-csi-provisioner"), "persistentvolumes", "create")
    assert allows(("ClusterRole", "rokfs-csi-snapshotter"), "volumesnapshotcontents", "update")
    snapshotter, groups = ("ClusterRole", "rokfs-csi-snapshotter"), "groupsnapshot.storage.k8s.io"
    assert allows(snapshotter, "volumegroupsnapshotclasses", "watch", groups)
    assert allows(snapshotter, "volumegroupsnapshotcontents", "update", groups)
    assert allows(snapshotter, "volumegroupsnapshotcontents/status", "patch", groups)
    assert allows(("ClusterRole", "rokfs-csi-resizer"), "persistentvolumeclaims/status", "patch")
    assert allows(("Role", "rokfs-csi-leader-election"), "leases", "create")


def test_group_snapshots_reach_the_group_controller(node, objects):
    """The snapshotter calls CreateVolumeGroupSnapshot only with its gate on,
    and the class's API version is one the pinned snapshotter (v8.x) serves."""
    snapshotter = containers(node)["csi-snapshotter"]
    gates = dict(g.split("=") for g in flag(snapshotter, "feature-gates").split(","))
    assert gates["CSIVolumeGroupSnapshot"] == "true"
    assert snapshotter["image"].rsplit(":", 1)[1].startswith("v8.")
    group_class = objects[("VolumeGroupSnapshotClass", "rokfs")]
    assert group_class["apiVersion"] == "groupsnapshot.storage.k8s.io/v1beta1"


def test_images_are_pinned(node):
    for container in node["containers"]:
        image = container["image"]
        assert ":" in image and not image.endswith(":latest"), shlex.quote(image)
