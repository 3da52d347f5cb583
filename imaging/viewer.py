"""The built-in viewer's server side: which study a launch URL names, and the page's strings.

The viewer itself is plain JavaScript (imaging/static/viewer/) that reads through our
DICOMweb only; this module decides what the page starts with.
"""

from functools import lru_cache

from django.http import Http404
from django.utils.translation import gettext as _
from pydicom.datadict import DicomDictionary

from imaging import storage
from records.models import Instance, Study

# CT presets (center, width) in Hounsfield units, in the order of the keys 1-5.
CT_PRESETS = (
    ("lung", -600, 1500),
    ("mediastinum", 50, 350),
    ("abdomen", 40, 400),
    ("bone", 400, 1800),
    ("brain", 40, 80),
)


def study_to_view(*, study_uid: str = "", accession: str = "") -> Study:
    """The study a launch URL names (``?study=`` wins over ``?accession=``); 404 when there is none.

    Several studies can share an accession number (two sites, a repeat): the most
    recent one is opened, as a RIS means the order it just sent.
    """
    if study_uid:
        if not storage.is_valid_uid(study_uid):
            raise Http404("not a Study Instance UID")
        found = Study.objects.filter(study_instance_uid=study_uid).first()
    elif accession:
        found = Study.objects.filter(accession_number=accession).order_by("-study_date", "-study_time", "-pk").first()
    else:
        raise Http404("the viewer needs ?study=<Study Instance UID> or ?accession=<number>")
    if found is None:
        raise Http404("no such study")
    return found


def series_to_open(study: Study, series_uid: str = "") -> str:
    """The series the viewer opens first: the one asked for if the study has it, else its first with images.

    Known before the page loads, so that the script asks for the series' instances at
    once, beside the study's series list, instead of after it.
    """
    series = study.series.filter(number_of_instances__gt=0)
    if series_uid and storage.is_valid_uid(series_uid):
        asked = series.filter(series_instance_uid=series_uid).values_list("series_instance_uid", flat=True).first()
        if asked:
            return asked
    return series.order_by("series_number", "pk").values_list("series_instance_uid", flat=True).first() or ""


def instance_list(series_uid: str) -> list[list]:
    """[[SOP Instance UID, Instance Number, frames], ...] of a series, in instance order, from the index.

    In the page, for the series opened first: one indexed query instead of a QIDO-RS
    round trip (which formats dicom+json for every instance: 0.5 s for 300 on this
    machine under load), so that the first frame is asked for as soon as the script runs.
    """
    if not series_uid:
        return []
    rows = (
        Instance.objects.filter(series__series_instance_uid=series_uid)
        .order_by("instance_number", "pk")
        .values_list("sop_instance_uid", "instance_number", "number_of_frames")
    )
    return [[sop, number, frames or 1] for sop, number, frames in rows]


def strings() -> dict[str, str]:
    """Every label the viewer shows, in the request's language (the page passes them to the script)."""
    return {
        "title": _("Viewer"),
        "studies": _("Studies"),
        "series": _("Series"),
        "loading": _("Loading…"),
        "loaded": _("loaded"),
        "image": _("Image"),
        "slice": _("Slice"),
        "zoom": _("Zoom"),
        "window": _("W/L"),
        "tool_window": _("Window"),
        "tool_pan": _("Pan"),
        "tool_zoom": _("Zoom"),
        "tool_measure": _("Measure"),
        "fit": _("Fit"),
        "actual_size": _("1:1"),
        "reset": _("Reset"),
        "invert": _("Invert"),
        "cine": _("Cine"),
        "stop": _("Stop"),
        "tags": _("Tags"),
        "close": _("Close"),
        "filter": _("Filter tags"),
        "tag": _("Tag"),
        "name": _("Name"),
        "vr": _("VR"),
        "value": _("Value"),
        "clear": _("Clear measurements"),
        "preset_lung": _("Lung"),
        "preset_mediastinum": _("Mediastinum"),
        "preset_abdomen": _("Abdomen"),
        "preset_bone": _("Bone"),
        "preset_brain": _("Brain"),
        "preset_default": _("Default"),
        "no_images": _("This series has no images the viewer can show."),
        "error": _("The image could not be loaded."),
        "help": _(
            "Drag: window/level · wheel or arrows: slices · 1-5: presets · 0: default window · "
            "I: invert · F: fit · R: reset · M: measure · C: cine · T: tags"
        ),
    }


@lru_cache(maxsize=1)
def tag_names() -> dict[str, str]:
    """Keyword of every public tag, by its dicom+json key ("00080018": "SOPInstanceUID"), for the tag browser."""
    return {f"{tag:08X}": entry[4] for tag, entry in DicomDictionary.items() if entry[4]}
