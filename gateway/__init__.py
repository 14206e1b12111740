"""The caching gateway: a fleet reads each object through it, the store serves each once.

Modules (see docs/GATEWAY.md)::

    app.py      HTTP only: routes, auth checks, status codes, Range, ETags
    guard.py    connection bounds: keep-alive and header timeouts, per-client and total limits
    service.py  the verified disk cache and single-flight origin fetches; warm-up
    objcache.py the disk cache: verified objects handed out as open files
    send.py     cache hits by sendfile, everything else piece by piece
    heads.py    HEAD with a short TTL, one refetch for everyone
    peers.py    peer fill: a miss asks the other gateways' caches before the store
    flight.py   one origin fetch in progress that any number of readers follow
    auth.py     bearer tokens -> owners
    metrics.py  Prometheus metrics in the gateway's own registry
    main.py     the ``syncd-gateway`` command
"""

from .app import create_app
from .auth import Tokens
from .service import GatewayService, ObjectRef

__all__ = ["GatewayService", "ObjectRef", "Tokens", "create_app"]
