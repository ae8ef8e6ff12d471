"""The live dashboard, on every worker: the page at `/` and its files at `/dashboard/{name}`
(app/dashboard/, chosen by app/dashboard_files.py). The page reads the same HTTP views and
WebSocket feed as any client (agents/web.py); docs/dashboard.md says what it shows.

GET /                    the page
GET /dashboard/{name}    its script and style sheet; 404 for any other name
"""

from __future__ import annotations

from faust.web import Request, Response, View

from app.dashboard_files import Asset, asset, index
from app.faust_app import app, settings
from models.intervals import interval_name

INTERVALS = [interval_name(iv) for iv in settings.bar_intervals_ns]


def _serve(view: View, request: Request, found: Asset) -> Response:
    headers = found.headers()
    if found.fresh_for(request.headers.get("If-None-Match")):
        del headers["Content-Type"]
        return view.bytes(b"", status=304, headers=headers)
    return view.bytes(found.body, headers=headers)


# Faust serves a placeholder `{"status": "OK"}` at `/` (its `production_index` blueprint,
# mounted when the worker's web server starts). aiohttp answers a path with the first route
# added for it, and a page registers when this module is imported, before the worker starts:
# so this page is the one answered (tests/integration/test_dashboard.py checks it).
@app.page("/")
class DashboardPage(View):
    async def get(self, request: Request) -> Response:
        return _serve(self, request, index(INTERVALS))


@app.page("/dashboard/{name}")
class DashboardFile(View):
    async def get(self, request: Request, name: str) -> Response:
        found = asset(name)
        if found is None:
            return self.json({"error": "no such file"}, status=404)
        return _serve(self, request, found)
