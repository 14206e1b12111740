"""Maintenance: what is reachable, what may be deleted, and whether a volume is whole.

    reachability.py  list a volume's objects, walk its history, the prune horizon
    prune.py         retention and deletion of unreachable objects
    check.py         end-to-end verification of snapshots and the bytes they reference
"""
