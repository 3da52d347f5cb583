"""/ohif/: the OHIF Viewer's files, its index.html for every client-side route, and our app-config.js.

All of it for Doctors and Administrators only, assets included: one rule for the
whole prefix is easy to state and to test (the URL walk), the viewer is of no use
to anyone else, and browsers keep the hashed bundles for a year, so the session
check costs a request once per version, not once per page. The DICOMweb requests
the viewer makes are same-origin, so our session cookie authenticates them and the
DICOMweb views apply the same roles again.
"""

import json
import re
import secrets
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse
from django.urls import reverse
from django.utils._os import safe_join
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from django.views.decorators.http import require_safe

from imaging.ohif import install
from network.dicomweb.base import root_url
from records import roles

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
}
# Bundles, chunks, wasm and fonts named by their content hash never change under that name.
HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.")
# A missing path that names a file is a 404, anything else is a route of the viewer.
FILE_SUFFIXES = (*CONTENT_TYPES, ".map", ".txt", ".gz", ".onnx")

# The viewer runs on what we serve and nothing else: no CDN, no telemetry, no other host
# (connect-src 'self'). Its codecs are WebAssembly ('wasm-unsafe-eval'); workers come from
# our files and from blob: URLs; styles are set inline by its components; the inline
# scripts of index.html carry the request's nonce.
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'nonce-{nonce}'; "
    "worker-src 'self' blob:; connect-src 'self' blob: data:; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def _headers(response, nonce: str = "none"):
    response["Content-Security-Policy"] = CSP.format(nonce=nonce)
    # Cross-origin isolated (with Django's Cross-Origin-Opener-Policy: same-origin): the
    # viewer gets SharedArrayBuffer for volumes (MPR); everything it loads is same-origin.
    response["Cross-Origin-Embedder-Policy"] = "require-corp"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


def prefix() -> str:
    return reverse("ohif", kwargs={"path": ""})


NONCE_SLOT = "__imaging_nonce__"


@lru_cache(maxsize=4)
def _index_template(path: Path, mtime: float, base: str) -> str:
    """The dist's index.html for ``base``: our prefix for its root paths, no service worker, a nonce slot."""
    html = path.read_text(encoding="utf-8")
    # A service worker would cache the viewer beyond the session's reach: not registered.
    html = re.sub(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>', "", html)
    html = html.replace('window.PUBLIC_URL="/"', f"window.PUBLIC_URL={json.dumps(base)}")
    html = re.sub(r'(src|href)="/(?!/)', rf'\1="{base}', html)
    # Relative URLs in the bundles (logo, preset images, library folders) from any route.
    html = html.replace("<head>", f'<head><base href="{base}">', 1)
    return html.replace("<script>", f'<script nonce="{NONCE_SLOT}">')


def _index(request):
    path = install.dist_dir() / "index.html"
    nonce = secrets.token_urlsafe(16)
    html = _index_template(path, path.stat().st_mtime, prefix()).replace(NONCE_SLOT, nonce)
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return _headers(response, nonce)


APP_CONFIG = """/* The OHIF Viewer's configuration, written by imaging/ohif/views.py for this server. */
window.config = {config};
// A session that ended (403 from our DICOMweb) signs in again and comes back here.
window.config.httpErrorHandler = function (error) {{
  if (error && (error.status === 401 || error.status === 403)) {{
    window.location.assign({login} + "?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }}
}};
"""


def app_config(request) -> dict:
    """The viewer's window.config: one DICOMweb data source, ours, as the browser reaches it."""
    dicomweb = root_url(request).rstrip("/")
    return {
        "routerBasename": prefix().rstrip("/") or "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "imaging",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "imaging",
                "configuration": {
                    "friendlyName": "Imaging archive",
                    "name": "imaging",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": dicomweb,
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    # Names match as C-FIND matches them; fuzzy matching of names comes next.
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "supportsReject": False,
                    "supportsStow": False,
                    "dicomUploadEnabled": False,
                    # Our bulk data answers multipart/related, as PS3.18 says.
                    "singlepart": False,
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


def _app_config_response(request):
    body = APP_CONFIG.format(
        config=json.dumps(app_config(request), indent=2, ensure_ascii=False),
        login=json.dumps(str(roles.LOGIN_URL)),
    )
    response = HttpResponse(body, content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return _headers(response)


def _takes_gzip(request) -> bool:
    """Does the Accept-Encoding header take gzip (and not with q=0)?"""
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() == "gzip":
            params = params.strip().lower()
            if not params.startswith("q="):
                return True
            try:
                return float(params[2:]) > 0
            except ValueError:
                return False
    return False


def _file(request, path: str):
    root = install.dist_dir()
    if any(part.startswith(".") for part in path.split("/")):
        return None  # the install marker, and never anything outside the dist
    try:
        full = Path(safe_join(root, path))
    except ValueError:
        return None
    if not full.is_file():
        return None
    stat = full.stat()
    response = get_conditional_response(request, last_modified=int(stat.st_mtime))
    if response is None:
        content_type = CONTENT_TYPES.get(full.suffix.lower(), "application/octet-stream")
        gzipped = full.with_name(full.name + ".gz")
        if full.suffix != ".gz" and gzipped.is_file() and _takes_gzip(request):
            response = FileResponse(gzipped.open("rb"), content_type=content_type, filename=full.name)
            response["Content-Encoding"] = "gzip"
        else:
            response = FileResponse(full.open("rb"), content_type=content_type)
        response["Last-Modified"] = http_date(stat.st_mtime)
    response["Vary"] = "Accept-Encoding, Cookie"
    if HASHED.search(full.name):
        response["Cache-Control"] = "private, max-age=31536000, immutable"
    else:
        response["Cache-Control"] = "private, no-cache"
    return _headers(response)


@roles.role_required(roles.DOCTOR, roles.ADMINISTRATOR)
@require_safe
def serve(request, path: str = ""):
    if not settings.OHIF_ENABLED:
        raise Http404("the OHIF Viewer is turned off (OHIF_ENABLED=0)")
    if not install.is_installed():
        return HttpResponse(
            "The OHIF Viewer is not installed: run `manage.py ohif_install` (make run does).",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    if path == "app-config.js":
        return _app_config_response(request)
    if path in ("", "index.html"):
        return _index(request)
    response = _file(request, path)
    if response is not None:
        return response
    if path.lower().endswith(FILE_SUFFIXES):
        raise Http404("no such file in the OHIF Viewer")
    return _index(request)  # a client-side route: /ohif/viewer?StudyInstanceUIDs=...
