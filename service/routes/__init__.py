"""HTTP routers; ``service.app`` includes them all."""

from service.routes import classify, health, info, page

GUARDED = (classify.router,)  # behind the bearer token when CASTREAM_API_KEY is set
OPEN = (health.router, info.router, info.metrics_router, page.router)
