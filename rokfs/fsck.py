"""fsck: recompute every reference count from the images' roots and compare.

A pool is consistent when (1) every map node reachable from a volume or
snapshot root exists and has FANOUT entries, (2) each node's stored count
equals the number of parents pointing at it, (3) each slot's stored count
equals the number of leaf entries pointing at it, (4) no stored node is
unreachable, (5) every partial slot's record (partial.py) belongs to a
referenced slot, names an old slot that is not partial itself, and has a
bitmap neither empty nor full; its reference on the old slot is counted
like a leaf entry's, (6) the space accounting kept as the pool changes
(each node's summaries, each image's allocated / exclusive / unhydrated
chunks) equals a recount from the maps and the recomputed counts. Leaks
(counts too high, unreachable nodes, records of unreferenced slots) waste
space only; counts too low would let live data be overwritten and are
errors; wrong accounting misreports space and loses nothing. Repair
rewrites every count and summary to its computed value, drops unreachable
nodes and partial records of unreferenced slots, and returns the space of
every free slot to the filesystem.
"""

from collections import Counter

from .errors import RokfsError
from .extentmap import LEAF, SLOT_BASE


def _expected_counts(pool, problems):
    node_refs, slot_refs = Counter(), Counter()
    images = pool.images()          # DELETING ones too: their roots hold references
    seen = set()
    stack = []
    for image in images:
        if image.root:
            node_refs[image.root] += 1
            stack.append((image.root, 0))
    while stack:
        node_id, level = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        try:
            node = pool.nodes.get(node_id)
        except RokfsError as exc:
            problems.append(f"error: {exc}")
            continue
        for entry in node:
            if level == LEAF:
                if entry >= SLOT_BASE:
                    slot_refs[entry - SLOT_BASE] += 1
            elif entry:
                node_refs[entry] += 1
                stack.append((entry, level + 1))
    _partial_refs(pool, slot_refs, problems)
    return node_refs, slot_refs


def _partial_refs(pool, slot_refs, problems):
    """Count each live partial record's reference on its old slot."""
    partials = pool.slots.partials
    for slot, (old, bits, _) in sorted(partials.table.items()):
        if not slot_refs.get(slot):
            problems.append(f"leak: partial slot {slot} is referenced by no map")
            continue
        slot_refs[old] += 1
        if old in partials:
            problems.append(f"error: partial slot {slot} lies over slot {old}, itself partial")
        if not 0 < bits < partials.full:
            problems.append(f"error: partial slot {slot} has a bitmap {bits:#x} that is "
                            "empty, full or too long")


def _compare(kind, stored, expected, problems):
    """Return (leaks, errors) counts; describe each mismatch in `problems`."""
    leaks = errors = 0
    for key in sorted(set(stored) | set(expected)):
        have, want = stored.get(key, 0), expected.get(key, 0)
        if have == want:
            continue
        if have > want:
            leaks += 1
            problems.append(f"leak: {kind} {key} count {have}, referenced {want} times")
        else:
            errors += 1
            problems.append(f"error: {kind} {key} count {have}, referenced {want} times")
    return leaks, errors


def _check_accounting(pool, node_refs, slot_refs, problems):
    """Recount every summary and every image's space; describe what the
    kept accounting gets wrong. Returns (summaries, {image: usage}, totals)."""
    nodes, cs = pool.nodes, pool.chunk_size
    summaries = nodes.recount([i.root for i in pool.images()], node_refs, slot_refs)
    for node_id, want in sorted(summaries.items()):
        have = (nodes.pos.get(node_id), nodes.mapped.get(node_id), nodes.sole.get(node_id))
        if have != want:
            problems.append(f"accounting: node {node_id} (position, mapped, sole) is {have}, "
                            f"recounted {want}")
    usages = {}
    for image in pool.images():
        want = _recounted_usage(image, summaries, node_refs)
        have = {k: image.usage()[k] // cs for k in want}
        usages[image.full_name] = {k: v * cs for k, v in want.items()}
        if have != want:
            problems.append(f"accounting: {image.full_name} chunks {have}, recounted {want}")
    totals = {"allocated": len(slot_refs) * cs,
              "exclusive": sum(u["exclusive"] for u in usages.values()),
              "unhydrated": sum(u["unhydrated"] for u in usages.values())}
    totals["shared"] = totals["allocated"] - totals["exclusive"]
    return summaries, usages, totals


def _recounted_usage(image, summaries, node_refs):
    root = image.root
    allocated = summaries[root][1] if root else 0
    exclusive = summaries[root][2] if root and node_refs[root] == 1 else 0
    return {"allocated": allocated, "exclusive": exclusive,
            "shared": allocated - exclusive, "unhydrated": image.count_cold()}


def fsck(pool, repair=False):
    pool.commit()
    problems = []
    node_refs, slot_refs = _expected_counts(pool, problems)
    stored_slots = {s: c for s, c in enumerate(pool.slots.rc) if c}
    for slot in slot_refs:
        if slot >= pool.slots.high_water:
            problems.append(f"error: slot {slot} is referenced but lies beyond the extent files")
    node_leaks, node_errors = _compare("node", dict(pool.nodes.rc), node_refs, problems)
    slot_leaks, slot_errors = _compare("slot", stored_slots, slot_refs, problems)
    read_errors = sum(p.startswith("error: map node") for p in problems)
    partial_leaks = sum(p.startswith("leak: partial") for p in problems)
    partial_errors = sum(p.startswith("error: partial") for p in problems)
    summaries, usages, totals = ({}, {}, {}) if read_errors else \
        _check_accounting(pool, node_refs, slot_refs, problems)
    clean = not problems
    report = {"clean": clean, "problems": problems, "repaired": False,
              "nodes": len(node_refs), "slots": len(slot_refs),
              "leaks": node_leaks + slot_leaks + partial_leaks,
              "errors": node_errors + slot_errors + read_errors + partial_errors,
              "accounting": sum(p.startswith("accounting:") for p in problems),
              "space": totals, "images": usages}
    if repair and not read_errors:
        _repair(pool, node_refs, slot_refs, summaries)
        report["repaired"] = True
    state = "clean" if clean else ("repaired" if report["repaired"] else "NOT clean")
    report["summary"] = (f"{state}: {report['nodes']} map nodes, {report['slots']} slots in use, "
                         f"{report['leaks']} leaks, {report['errors']} errors, "
                         f"{report['accounting']} accounting mismatches")
    return report


def _repair(pool, node_refs, slot_refs, summaries):
    nodes, slots = pool.nodes, pool.slots
    for node_id in list(nodes.rc):
        if node_id not in node_refs:
            nodes.forget(node_id)
    for node_id, count in node_refs.items():
        if nodes.rc.get(node_id) != count:
            nodes.set_count(node_id, count)
    for slot in list(slots.partials.table):
        if not slot_refs.get(slot):
            slots.partials.forget(slot)
    free = []
    for slot in range(slots.high_water):
        want = slot_refs.get(slot, 0)
        if slots.rc[slot] != want:
            slots.set_count(slot, want)
        if want == 0:
            free.append(slot)
    pool.forget_slot_hashes(free)
    nodes.reset_summaries(summaries)
    for image in pool.images():
        image.cold = image.count_cold()
        pool.changed(image)
    pool.commit()
    slots.reset_free(free)
    slots.punch(free)
