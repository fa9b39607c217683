"""The Redis keys of one namespace (``storage.redis.namespace``).

Every key starts with ``{<namespace>}:`` (a Redis Cluster hash tag, so multi-key scripts
stay in one slot):

=====================================  ======  =============================================
key                                    type    holds
=====================================  ======  =============================================
``lease``                              string  token of the replica running the control loop
``policy:versions``                    hash    scope -> latest version
``policy:latest``                      hash    scope -> ``"<version> <record JSON>"``
``policy:history:<scope>``             list    the same entries, newest first
``policy:meta``                        hash    bookkeeping (YAML policy digests)
``policy:changed``                     pubsub  ``"<version> <scope>"`` after each append
``templates``                          hash    template text -> pattern id (first wins)
``stats:services``                     zset    service -> time of its last push
``stats:counts:<service>:<bucket>``    hash    counts of one stats window (stats.py)
``stats:patterns:<service>``           hash    pattern id -> template, family, first seen
=====================================  ======  =============================================
"""

from __future__ import annotations


class Keys:
    """Key names for ``namespace`` (table in the module docstring)."""

    def __init__(self, namespace: str) -> None:
        self.prefix = p = "{" + namespace + "}"
        self.lease = f"{p}:lease"
        self.versions = f"{p}:policy:versions"
        self.latest = f"{p}:policy:latest"
        self.meta = f"{p}:policy:meta"
        self.changed = f"{p}:policy:changed"
        self.templates = f"{p}:templates"
        self.services = f"{p}:stats:services"

    def history(self, scope: str) -> str:
        return f"{self.prefix}:policy:history:{scope}"

    def stats(self, service: str, bucket: int) -> str:
        return f"{self.prefix}:stats:counts:{service}:{bucket}"

    def patterns(self, service: str) -> str:
        return f"{self.prefix}:stats:patterns:{service}"
