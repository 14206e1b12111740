"""The caching gateway: many workers read chunks through it, the store serves each once.

Modules (see docs/GATEWAY.md)::

    app.py      HTTP only: routes, auth checks, status codes, Range, ETags
    service.py  the verified disk cache and single-flight origin fetches; warm-up
    flight.py   one origin fetch in progress that any number of readers follow
    auth.py     bearer tokens -> owners
    metrics.py  Prometheus metrics in the gateway's own registry
    main.py     the ``syncd-gateway`` command
"""

from .app import create_app
from .auth import Tokens
from .service import GatewayService, ObjectRef

__all__ = ["GatewayService", "ObjectRef", "Tokens", "create_app"]
