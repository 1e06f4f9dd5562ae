"""The FUSE view's Operations: the only FUSE-aware class.

    /              get user.rokfs.pool
    volumes/NAME   read-write image file of volume NAME (size = volume size)
    snapshots/NAME/SNAP   read-only image file of snapshot NAME@SNAP

Invariants:
- Every operation calls Control verbs (I/O through `control.open_device`),
  never the Pool. A RokfsError becomes FUSEError(its errno) in one place,
  `to_fuse_error`, its reason logged once, at warning (ENOENT: debug); any
  other exception is a bug: logged with its traceback, answered EIO.
- A lookup of a name that cannot exist (an invalid name) is ENOENT like any
  other missing name; only the operation that would create it says why not.
- An image file's st_blocks is its allocated bytes / 512 (so `du` tells
  what the image takes: its info's `allocated`); st_size its size.
- A volume created through the view and refused its first size while the
  creating handle is open (`truncate -s 1P volumes/big`) is deleted
  (deferred: gone at once, freed on close): a failed create leaves nothing.
- Inode numbers derive from the engine's image ids (unique across volumes
  and snapshots, stable across restarts): file = BASE + 2*id, the
  snapshots/NAME directory of a volume = BASE + 2*id + 1. The FUSE layer only
  remembers the last name seen for an inode and re-checks the id on use, so a
  deleted or replaced image is ENOENT, never another image's data.
- Image files are opened with direct_io: every read and write reaches the
  engine, so FUSE and NBD (or any other front end in the same process) see
  the same bytes without cache invalidation. I/O runs on the trio loop.
  (`page_cache=True`, `rokfs mount --page-cache`, lets the kernel cache
  image pages while a file is open instead: writes made through NBD
  meanwhile are not seen; for a FUSE-only workstation.)
- A write past the end of a volume is EFBIG (resize with truncate first);
  sizes are multiples of 512 bytes (EINVAL otherwise); shrinking over stored
  data is EINVAL (trim first); rm of an open or snapshotted volume is
  EBUSY / ENOTEMPTY.
"""

import errno
import functools
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from ..errors import InvalidArgument, NotFound, RokfsError
from . import xattrs as X

log = logging.getLogger("rokfs.fuse")

ROOT_INO = pyfuse3.ROOT_INODE
VOLUMES_INO, SNAPSHOTS_INO = ROOT_INO + 1, ROOT_INO + 2
BASE_INO = 16
TIMEOUT = 1.0          # seconds the kernel may cache names and attributes
FIXED = {ROOT_INO: ("", X.ROOT), VOLUMES_INO: ("volumes", X.VOLUMES),
         SNAPSHOTS_INO: ("snapshots", X.SNAPSHOTS)}
DIR_MODE, VOLUME_MODE, SNAPSHOT_MODE = 0o755, 0o644, 0o444


def _fail(code, message):
    log.warning("fuse: %s (%s)", message, errno.errorcode.get(code, code))
    raise pyfuse3.FUSEError(code)


@dataclass
class Node:
    ino: int
    kind: str
    name: str          # volume name, "VOL@SNAP", or the volume of a snapshots/ dir
    image_id: int = 0


@dataclass
class Handle:
    device: object
    ino: int
    dirty: bool = False


def to_fuse_error(exc, what):
    """The one error boundary: an exception -> FUSEError(errno), reason logged."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, RokfsError):
        level = logging.DEBUG if exc.errno == errno.ENOENT else logging.WARNING
        log.log(level, "fuse: %s: %s (%s)", what, exc, errno.errorcode.get(exc.errno, exc.errno))
        return pyfuse3.FUSEError(exc.errno)
    log.error("fuse: %s failed unexpectedly", what, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def _translated(method):
    """Apply to_fuse_error to every exception leaving an operation."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except Exception as exc:
            raise to_fuse_error(exc, method.__name__) from None
    return wrapper


class RokfsOperations(pyfuse3.Operations):
    def __init__(self, control, *, page_cache=False):
        super().__init__()
        self.control = control
        self.page_cache = page_cache   # kernel caches image data: not coherent with NBD
        self.uid, self.gid = os.getuid(), os.getgid()
        self.nodes = {}          # ino -> Node, for images and snapshots/NAME dirs
        self.handles = {}        # fh -> Handle
        self.unsized = {}        # ino -> fh: created here, not yet given a size
        self._next_fh = 1
        self.mounted_at = time.time()

    # -- nodes --------------------------------------------------------------------------
    def _image_node(self, name):
        st = self.control.stat(name)
        kind = X.SNAPSHOT if st["read_only"] else X.VOLUME
        node = Node(BASE_INO + 2 * st["id"], kind, st["name"], st["id"])
        self.nodes[node.ino] = node
        return node, st

    def _snapdir_node(self, volume):
        st = self.control.stat(volume)
        node = Node(BASE_INO + 2 * st["id"] + 1, X.SNAPDIR, st["name"], st["id"])
        self.nodes[node.ino] = node
        return node, st

    def _node(self, ino):
        if ino in FIXED:
            name, kind = FIXED[ino]
            return Node(ino, kind, name)
        node = self.nodes.get(ino)
        if node is None:
            _fail(errno.ENOENT, f"inode {ino} is unknown")
        self._stat(node)
        return node

    def _stat(self, node):
        """The image's (or snapshot directory's volume's) stat, checked to be
        the same image the inode was made for; an image deleted (deferred)
        while open here still has its stat through its handle."""
        try:
            st = self.control.stat(node.name)
            if st["id"] == node.image_id:
                return st
        except NotFound:
            pass
        for handle in self.handles.values():
            if handle.ino == node.ino:
                return {**handle.device.stat(), "unlinked": True}
        _fail(errno.ENOENT, f"{node.name} is gone")

    def _child(self, parent, name):
        """(Node, stat or None) of `name` (str) in directory `parent`."""
        if parent.kind == X.ROOT:
            for ino, (fixed_name, _) in FIXED.items():
                if fixed_name == name and ino != ROOT_INO:
                    return self._node(ino), None
        elif parent.kind == X.VOLUMES and "@" not in name:
            return self._image_node(name)
        elif parent.kind == X.SNAPSHOTS and "@" not in name:
            return self._snapdir_node(name)
        elif parent.kind == X.SNAPDIR and "@" not in name:
            return self._image_node(f"{parent.name}@{name}")
        raise NotFound(f"no {name!r} here")

    def _attrs(self, node, st=None):
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = node.ino
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        entry.st_uid, entry.st_gid = self.uid, self.gid
        entry.st_blksize = 4096
        if node.kind in (X.VOLUME, X.SNAPSHOT):
            st = st or self._stat(node)
            mode = VOLUME_MODE if node.kind == X.VOLUME else SNAPSHOT_MODE
            entry.st_mode = stat.S_IFREG | mode
            entry.st_nlink = 0 if st.get("unlinked") else 1
            entry.st_size = st["size"]
            entry.st_blocks = st["allocated"] // 512
            created = st["created"]
        else:
            entry.st_mode = stat.S_IFDIR | DIR_MODE
            entry.st_nlink = 2
            created = st["created"] if st else self.mounted_at
        ns = int(created * 1e9)
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = ns
        return entry

    def _listing(self, node):
        """[(name, Node, stat)] of a directory, sorted."""
        if node.kind == X.ROOT:
            return [(n, self._node(i), None) for i, (n, _) in FIXED.items() if i != ROOT_INO]
        exports = self.control.list_exports()
        if node.kind == X.VOLUMES:
            return [(name, *self._image_node(name)) for name, _, ro, _ in exports if not ro]
        if node.kind == X.SNAPSHOTS:
            return [(name, *self._snapdir_node(name)) for name, _, ro, _ in exports if not ro]
        prefix = node.name + "@"
        return [(name[len(prefix):], *self._image_node(name))
                for name, _, ro, _ in exports if ro and name.startswith(prefix)]

    # -- lookups and directories ---------------------------------------------------------------
    @_translated
    async def lookup(self, parent_inode, name, ctx=None):
        name = os.fsdecode(name)
        parent = self._node(parent_inode)
        if name == ".":
            return await self.getattr(parent_inode)
        try:
            child, st = self._child(parent, name)
        except InvalidArgument as exc:          # a name that cannot exist is missing
            raise NotFound(f"no {name!r} here ({exc})") from None
        return self._attrs(child, st)

    @_translated
    async def getattr(self, inode, ctx=None):
        node = self._node(inode)
        return self._attrs(node)

    @_translated
    async def opendir(self, inode, ctx):
        if self._node(inode).kind in (X.VOLUME, X.SNAPSHOT):
            _fail(errno.ENOTDIR, "not a directory")
        return inode

    @_translated
    async def readdir(self, fh, start_id, token):
        listing = self._listing(self._node(fh))
        for i, (name, node, st) in enumerate(listing[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(node, st), i + 1):
                break

    async def releasedir(self, fh):
        pass

    @_translated
    async def statfs(self, ctx):
        status = self.control.status()
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = status["capacity_bytes"] // 4096
        st.f_bfree = st.f_bavail = status["free_bytes"] // 4096
        st.f_files = status["volumes"] + status["snapshots"]
        st.f_ffree = st.f_favail = 1 << 20
        st.f_namemax = 63
        return st

    # -- files ----------------------------------------------------------------------------------
    def _new_handle(self, device, ino):
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(device, ino)
        info = pyfuse3.FileInfo(fh=fh, direct_io=not self.page_cache, keep_cache=False)
        return info

    @_translated
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.kind not in (X.VOLUME, X.SNAPSHOT):
            _fail(errno.EISDIR, f"{node.name or '/'} is a directory")
        if node.kind == X.SNAPSHOT and flags & os.O_ACCMODE != os.O_RDONLY:
            _fail(errno.EROFS, f"snapshot {node.name} is read-only")
        return self._new_handle(self.control.open_device(node.name, front="fuse"), inode)

    @_translated
    async def create(self, parent_inode, name, mode, flags, ctx):
        node = await self._make_volume(parent_inode, name, mode)
        info = self._new_handle(self.control.open_device(node.name, front="fuse"), node.ino)
        self.unsized[node.ino] = info.fh
        return info, self._attrs(node)

    @_translated
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._attrs(await self._make_volume(parent_inode, name, mode))

    async def _make_volume(self, parent_inode, name, mode):
        parent = self._node(parent_inode)
        if not stat.S_ISREG(mode):
            _fail(errno.EPERM, "only regular files (volumes) can be created")
        if parent.kind in (X.SNAPDIR, X.SNAPSHOTS):
            _fail(errno.EROFS, "snapshots are made with user.rokfs.snapshot, not files")
        if parent.kind != X.VOLUMES:
            _fail(errno.EPERM, "new files go in volumes/")
        name = os.fsdecode(name)
        await self.control.create_volume(name, 0)
        return self._image_node(name)[0]

    def _handle(self, fh):
        handle = self.handles.get(fh)
        if handle is None:
            _fail(errno.EBADF, f"no open file {fh}")
        return handle

    # read and write are the hot path: no wrapper coroutine, same boundary
    async def read(self, fh, off, size):
        try:
            device = self.handles[fh].device
            size = min(size, device.size - off)
            if size <= 0:
                return b""
            return await device.pread(off, size)
        except Exception as exc:
            raise to_fuse_error(exc, "read") from None

    async def write(self, fh, off, buf):
        try:
            handle = self.handles[fh]
            device = handle.device
            if off + len(buf) > device.size:
                _fail(errno.EFBIG, f"write past the end of {device.name} ({device.size} "
                      "bytes): resize it first (truncate -s SIZE)")
            await device.pwrite(off, buf)
            handle.dirty = True
            return len(buf)
        except Exception as exc:
            raise to_fuse_error(exc, "write") from None

    @_translated
    async def flush(self, fh):
        handle = self._handle(fh)
        if handle.dirty:
            handle.dirty = False
            await handle.device.flush()

    @_translated
    async def fsync(self, fh, datasync):
        handle = self._handle(fh)
        handle.dirty = False
        await handle.device.flush()

    async def release(self, fh):
        handle = self.handles.pop(fh, None)
        if handle is not None:
            if self.unsized.get(handle.ino) == fh:
                del self.unsized[handle.ino]
            handle.device.close()

    @_translated
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            _fail(errno.EPERM, f"{node.name or '/'}: mode and owner are fixed")
        if fields.update_size:
            if node.kind == X.SNAPSHOT:
                _fail(errno.EROFS, f"snapshot {node.name} is read-only")
            if node.kind != X.VOLUME:
                _fail(errno.EISDIR, f"{node.name or '/'} is a directory")
            await self._resize(node, attr.st_size)
        # atime/mtime updates are accepted and ignored (touch works)
        return self._attrs(node)

    async def _resize(self, node, size):
        """Resize; a volume refused its first size by the handle that
        created it is deleted (deferred), so a failed create leaves nothing."""
        unsized = self.unsized.pop(node.ino, None) is not None
        try:
            await self.control.resize_volume(node.name, size)
        except RokfsError:
            if unsized:
                await self._forget_created(node)
            raise

    async def _forget_created(self, node):
        log.info("event=fuse_create_undone volume=%s", node.name)
        await self.control.delete_volume(node.name, defer=True)
        pyfuse3.invalidate_entry_async(VOLUMES_INO, os.fsencode(node.name), ignore_enoent=True)

    # -- names ------------------------------------------------------------------------------
    @_translated
    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        name = os.fsdecode(name)
        if parent.kind == X.VOLUMES:
            await self.control.delete_volume(name)
        elif parent.kind == X.SNAPDIR:
            await self.control.delete_snapshot(f"{parent.name}@{name}")
        else:
            _fail(errno.EPERM, f"cannot remove {name!r} here")

    @_translated
    async def rmdir(self, parent_inode, name, ctx):
        _fail(errno.EPERM, "directories of the view cannot be removed "
              "(rm the volume's snapshots, then the volume)")

    @_translated
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old, new = self._node(parent_inode_old), self._node(parent_inode_new)
        if flags:
            _fail(errno.EINVAL, "rename flags (exchange/noreplace) are not supported")
        if old.kind != X.VOLUMES or new.kind != X.VOLUMES:
            _fail(errno.EPERM, "only volumes/NAME can be renamed, within volumes/")
        old_name, new_name = os.fsdecode(name_old), os.fsdecode(name_new)
        await self.control.rename_volume(old_name, new_name)
        self._renamed(old_name, new_name)

    def _renamed(self, old, new):
        """The kernel keeps the inodes: follow the volume's new name."""
        for node in self.nodes.values():
            if node.name == old:
                node.name = new
            elif node.name.startswith(old + "@"):
                node.name = new + node.name[len(old):]

    @_translated
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._node(parent_inode)
        code = errno.EROFS if parent.kind in (X.SNAPSHOTS, X.SNAPDIR) else errno.EPERM
        _fail(code, "the view's directories are fixed")

    @_translated
    async def symlink(self, parent_inode, name, target, ctx):
        _fail(errno.EPERM, "symbolic links are not supported")

    @_translated
    async def link(self, inode, new_parent_inode, new_name, ctx):
        _fail(errno.EPERM, "hard links are not supported")

    # -- extended attributes --------------------------------------------------------------------
    @_translated
    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        attr = X.lookup(name, node.kind)
        if attr is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        if attr.get is None:         # a command: reading it tells how to use it
            return X.encode(f"set: {attr.help}")
        return X.encode(await attr.get(self.control, node))

    @_translated
    async def setxattr(self, inode, name, value, ctx):
        node = self._node(inode)
        attr = X.lookup(name, node.kind)
        if attr is None or attr.set is None:
            _fail(errno.ENOTSUP, f"{node.name or '/'}: no settable attribute {name!r}")
        try:
            await attr.set(self.control, node, X.decode(value))
        except InvalidArgument as exc:
            raise InvalidArgument(f"setxattr {os.fsdecode(name)} on {node.name}: {exc}") \
                from None

    @_translated
    async def listxattr(self, inode, ctx):
        return X.names_for(self._node(inode).kind)

    @_translated
    async def removexattr(self, inode, name, ctx):
        node = self._node(inode)
        code = errno.ENOTSUP if X.lookup(name, node.kind) else errno.ENODATA
        _fail(code, f"{node.name or '/'}: attributes cannot be removed")
