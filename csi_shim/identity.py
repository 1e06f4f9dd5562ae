"""CSI Identity service: who we are, what we offer, whether the daemon answers."""

from google.protobuf import wrappers_pb2

from . import csi_pb2 as csi
from . import csi_pb2_grpc
from .errors import rpc

DRIVER_NAME = "rokfs.csi.dev"
Service = csi.PluginCapability.Service
Expansion = csi.PluginCapability.VolumeExpansion


def _version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("rokfs")
    except PackageNotFoundError:
        return "0.0.0"


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, client):
        self.client = client

    @rpc
    def GetPluginInfo(self, request):
        return csi.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=_version())

    @rpc
    def GetPluginCapabilities(self, request):
        caps = [csi.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)),
                csi.PluginCapability(service=Service(
                    type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
                csi.PluginCapability(service=Service(type=Service.GROUP_CONTROLLER_SERVICE)),
                # An attached export has the size it had at attach time, so a
                # volume grows while it is not staged (NodeStage sees the size).
                csi.PluginCapability(volume_expansion=Expansion(type=Expansion.OFFLINE))]
        return csi.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    def Probe(self, request):
        self.client.status()        # raises (-> UNAVAILABLE) if the daemon is down
        return csi.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
