"""State shared by the replicas of a service through Redis (``storage.backend: redis``).

DESIGN.md §State and scale; user documentation: docs/scale.md.

- keys.py: the Redis keys of one namespace;
- lease.py: the leader lease (one replica runs the control loop);
- store.py: the shared policy store (versions, history, change notices);
- stats.py: pattern statistics pushed by every replica, summed for the leader;
- templates.py: the template registry that makes replicas agree on pattern ids;
- replica.py: the background tasks that tie them to one sidecar process.

Nothing here runs on the per-batch path: every Redis call is made by a background task.
"""
