"""WADO-RS rendered and thumbnail (PS3.18 10.4.1.1.5, 10.4.1.1.6): image/jpeg or image/png.

Every image goes through ``imaging.render`` (modality LUT, VOI, MONOCHROME1,
color, signed pixels, compressed files), as the series thumbnails and the viewer
do. Parameters: ``window=center,width[,linear|linear_exact|sigmoid]``,
``viewport=width,height`` (fitted within, aspect kept), ``quality=1..100`` (JPEG).
A study or series is rendered as its representative image: the middle instance
of its first series (of the series).
"""

import io

from django.conf import settings
from django.http import HttpResponse

from imaging import render
from network.dicomweb import base, multipart
from network.dicomweb.frames import parse_frames

JPEG, PNG = "image/jpeg", "image/png"
_IGNORED = {"annotation", "charset", "iccprofile"}  # accepted, not applied (documented)
_KNOWN = {"window", "viewport", "quality"}
_FUNCTIONS = {"linear": "LINEAR", "linear_exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


def choose_media(accept: str | None) -> str:
    for r in multipart.parse_accept(accept):
        for media in (JPEG, PNG):
            if multipart.matches(media, r.type):
                return media
    raise base.not_acceptable(accept, f"{JPEG} or {PNG}")


def _numbers(params, name: str, count: tuple[int, ...], cast=float) -> list | None:
    values = params.getlist(name)
    if not values:
        return None
    parts = [p.strip() for p in values[-1].split(",")]
    if len(values) > 1 or len(parts) not in count:
        raise base.BadRequest(f"{name} takes {' or '.join(map(str, count))} comma-separated values, not {values!r}")
    try:
        return [cast(p) for p in parts]
    except ValueError as exc:
        raise base.BadRequest(f"{name}={values[-1]!r}: {exc}") from exc


def parameters(params) -> dict:
    """window, viewport and quality of a rendered request; 400 for a bad or unknown one."""
    unknown = set(params) - _KNOWN - _IGNORED
    if unknown:
        raise base.BadRequest(f"unknown parameter(s) {sorted(unknown)}: rendered takes window, viewport, quality")
    window = None
    if params.getlist("window"):
        raw = params.getlist("window")[-1].split(",")
        if len(raw) == 3:
            function = _FUNCTIONS.get(raw[2].strip().lower())
            if function is None:
                raise base.BadRequest(f"window function {raw[2]!r} is not linear, linear_exact or sigmoid")
        else:
            function = "LINEAR"
        center, width = _numbers(params, "window", (2, 3), cast=lambda v: v)[:2]
        try:
            center, width = float(center), float(width)
        except ValueError as exc:
            raise base.BadRequest(f"window={params.getlist('window')[-1]!r}: center and width are numbers") from exc
        if not width > 0:
            raise base.BadRequest("window width must be positive")
        window = (center, width, function)
    viewport = _numbers(params, "viewport", (2,), cast=int)
    if viewport is not None and (min(viewport) < 1 or max(viewport) > 8192):
        raise base.BadRequest("viewport width and height are 1 to 8192 pixels")
    quality = _numbers(params, "quality", (1,), cast=int)
    if quality is not None and not 1 <= quality[0] <= 100:
        raise base.BadRequest("quality is 1 to 100")
    return {"window": window, "viewport": viewport, "quality": quality[0] if quality else 90}


def image_response(request, instance, frame: int | None, *, thumbnail: bool) -> HttpResponse:
    media = choose_media(request.headers.get("Accept"))
    options = parameters(request.GET)
    try:
        image, header = render.render_with_header(base.stored_file(instance), frame, options["window"])
    except render.CannotRender as exc:
        raise base.NotAcceptable(f"the instance cannot be rendered as an image: {exc}") from exc
    viewport, enlarge = options["viewport"], True
    if viewport is None and thumbnail:
        # A thumbnail of its own size: within THUMBNAIL_SIZE, never enlarged (as the series thumbnails).
        viewport, enlarge = [settings.THUMBNAIL_SIZE, settings.THUMBNAIL_SIZE], False
    if viewport is not None:
        image = render.fit(image, viewport[0], viewport[1], header, enlarge=enlarge)
    out = io.BytesIO()
    if media == JPEG:
        image.save(out, "JPEG", quality=options["quality"])
    else:
        image.save(out, "PNG")
    return HttpResponse(out.getvalue(), content_type=media)


def representative(found: list):
    """The middle instance of the first series among ``found`` (ordered by series, then instance)."""
    first = found[0].series_id
    series = [i for i in found if i.series_id == first]
    return series[(len(series) - 1) // 2]


class Rendered(base.DicomWebView):
    """rendered and thumbnail of a study, a series, an instance or one frame."""

    thumbnail = False
    action = base.Action.WADO_RENDERED

    def get(self, request, study, series=None, sop=None, frames=None):
        found = base.instances(study, series, sop)
        base.record(request, study, self.action)
        instance = found[0] if sop else representative(found)
        frame = None if self.thumbnail else 0
        if frames is not None:
            numbers = parse_frames(frames, instance.number_of_frames or 1)
            if len(numbers) != 1:
                raise base.BadRequest("rendered frames: one frame per request")
            frame = numbers[0] - 1
        return image_response(request, instance, frame, thumbnail=self.thumbnail)


class Thumbnail(Rendered):
    thumbnail = True
    action = base.Action.WADO_THUMBNAIL
