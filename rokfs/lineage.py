"""Lineage: where an image came from and what came from it.

Built from what the engine records: a snapshot's volume, a volume's
`origin` (the image it was cloned from, or REMOTE_URL#VOLUME@SNAP for a
pulled volume) and a snapshot's group. Read-only, O(images) per call, on
the loop; images gone since are named as such, never looked up by id.
"""

from .errors import RokfsError


def of(pool, image):
    """{"ancestors": oldest first (remote manifests, volumes, snapshots),
    "tree": `image` with its descendants}."""
    return {"ancestors": ancestors(pool, image), "tree": descendants(pool, image)}


def _node(image):
    kind = "snapshot" if image.read_only else "volume"
    out = {"name": image.full_name, "kind": kind, "created": image.created}
    if image.read_only and image.group:
        out["group"] = image.group
    return out


def _parent(pool, image):
    """The lineage parent of `image`: a node dict, an image, or None."""
    if image.read_only:
        return pool.image_by_id(image.volume_id) or {"name": image.volume_name,
                                                     "kind": "volume (deleted)"}
    if not image.origin:
        return None
    if "#" in image.origin:
        return {"name": image.origin, "kind": "remote snapshot"}
    try:
        return pool.get_image(image.origin)
    except RokfsError:
        return {"name": image.origin, "kind": "snapshot (deleted)" if "@" in image.origin
                else "volume (deleted)"}


def ancestors(pool, image):
    chain, seen = [], {image.id}
    parent = _parent(pool, image)
    while parent is not None:
        if isinstance(parent, dict):
            chain.append(parent)
            break
        if parent.id in seen:           # a volume cloned from its own snapshot's clone...
            break
        seen.add(parent.id)
        chain.append(_node(parent))
        parent = _parent(pool, parent)
    return chain[::-1]


def descendants(pool, image):
    """`image`'s node with its children: snapshots of a volume, clones of a
    volume or snapshot, recursively (O(images) for the index)."""
    clones = {}
    for vol in pool.list_volumes():
        if vol.origin and "#" not in vol.origin:
            clones.setdefault(vol.origin, []).append(vol)
    snaps = {}
    for snap in pool.list_snapshots():
        snaps.setdefault(snap.volume_id, []).append(snap)

    def tree(img, seen):
        children = (snaps.get(img.id, []) if not img.read_only else []) + \
            clones.get(img.full_name, [])
        return {**_node(img), "children": [tree(c, seen | {c.id}) for c in children
                                           if c.id not in seen]}
    return tree(image, {image.id})
