"""HTTP routers; ``service.app`` includes them all."""

from service.routes import classify, health, info, page, v2

GUARDED = (classify.router, v2.infer_router)  # behind the bearer token when CASTREAM_API_KEY is set
OPEN = (health.router, info.router, info.metrics_router, page.router, v2.router)
