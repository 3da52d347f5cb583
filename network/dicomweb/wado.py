"""WADO-RS (PS3.18 chapter 10.4): instances, metadata and bulk data of a study, series or instance.

Instances go out as ``multipart/related; type="application/dicom"``, each part
the stored file read in chunks (``StreamingHttpResponse``: a 2 GB study never
sits in memory), in its stored transfer syntax when the client accepts it
(``transfer-syntax=*``, the stored one, or none named), else transcoded to
Explicit VR Little Endian when the client asks for that and the pixels can be
decoded; 406 otherwise, decided for every instance before the first byte is sent.
Metadata is the dicom+json of each file's header (``imaging.dicomfile``'s bounded
reading) with BulkDataURIs back to this server as the client sees it.
"""

import io
import logging
import uuid

import pydicom
from django.http import StreamingHttpResponse
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from imaging import dicomfile, rewrite
from network.dicomweb import base, formatter, frames, metacache, multipart

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_NATIVE_LITTLE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_INDEX_FIELDS = ("sop_instance_uid", "transfer_syntax_uid", "file_path", "number_of_frames")


def accepted_syntaxes(accept: str | None) -> list[str | None]:
    """The transfer syntaxes an Accept header takes application/dicom in (None: not named); [] for none."""
    syntaxes = []
    for r in multipart.parse_accept(accept):
        if r.type in ("*/*", "multipart/*") or (
            r.type == "multipart/related" and (r.part_type is None or r.part_type == "application/dicom")
        ):
            syntaxes.append(r.transfer_syntax)
        elif r.type == "application/dicom":  # single part asked for: answered multipart, as PS3.18 has it
            syntaxes.append(r.transfer_syntax)
    return syntaxes


def can_transcode(stored: str) -> bool:
    """Can a file in ``stored`` be sent in Explicit VR Little Endian (its pixels decoded if need be)?"""
    uid = UID(stored)
    if stored in _NATIVE_LITTLE or uid.is_deflated:
        return True
    if not uid.is_compressed:
        return False  # big endian: pydicom does not swap on writing
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def choose_syntax(stored: str, accepted: list[str | None]) -> str | None:
    """What to send a file in: the stored syntax, Explicit VR Little Endian, or None (not acceptable)."""
    for syntax in accepted:
        if syntax in (None, "*", stored):
            return stored
        if syntax == base.EXPLICIT_VR_LITTLE_ENDIAN and can_transcode(stored):
            return syntax
    return None


def transcode(path) -> bytes:
    """A stored file as Explicit VR Little Endian, pixels decoded: one instance in memory, not a study.

    ``path`` may be a whole file in memory (a corrected one, read whole by pydicom already).
    """
    if isinstance(path, memoryview):
        ds = pydicom.dcmread(io.BytesIO(path), force=True)
    else:
        dicomfile.check_inflated_size(path)  # a deflate bomb raises here, in bounded memory
        ds = pydicom.dcmread(path, force=True)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # lossless: the same instance
    ds.file_meta.TransferSyntaxUID = base.EXPLICIT_VR_LITTLE_ENDIAN
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def file_chunks(path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _instance_parts(request, found, syntaxes):
    for instance, syntax in zip(found, syntaxes, strict=True):
        path = base.path_of(instance)
        location = base.instance_url(
            request,
            instance.series.study.study_instance_uid,
            instance.series.series_instance_uid,
            instance.sop_instance_uid,
        )
        # Its rewrite pending (rewrite.mark_pending): the file with the corrected values, from memory.
        corrected = _corrected(instance)
        if syntax == instance.transfer_syntax_uid:
            chunks = file_chunks(path) if corrected is None else [corrected]
        else:
            try:
                chunks = [transcode(path if corrected is None else corrected)]
            except Exception:
                # Too late for a status: the instance is left out, and the log says why.
                log.exception("WADO-RS: %s could not be transcoded; left out of the response", path)
                continue
        yield multipart.Part(f"application/dicom; transfer-syntax={syntax}", chunks, location)


def _corrected(instance) -> memoryview | None:
    """The corrected file of an instance ``rewrite.mark_pending`` marked, None to serve the stored file."""
    at = getattr(instance, "corrected_at", None)
    return rewrite.outgoing_file(instance.pk, at=at) if at is not None else None


def retrieve(request, study, series=None, sop=None):
    accept = request.headers.get("Accept")
    accepted = accepted_syntaxes(accept)
    if not accepted:
        raise base.not_acceptable(accept, 'multipart/related; type="application/dicom"')
    found = rewrite.mark_pending(base.instances(study, series, sop, fields=_INDEX_FIELDS))
    base.record(request, study, base.Action.WADO_RETRIEVE)
    # A file removed behind the index's back is left out (and logged), not a broken stream.
    present = [i for i in found if base.path_of(i).is_file()]
    for missing in set(found) - set(present):
        log.warning("WADO-RS: %s is indexed but its file %s is missing", missing.sop_instance_uid, missing.file_path)
    if not present:
        raise base.NotFound("the stored files of these instances are missing (reindex needed)")
    found = present
    syntaxes = []
    for instance in found:
        syntax = choose_syntax(instance.transfer_syntax_uid, accepted)
        if syntax is None:
            raise base.NotAcceptable(
                f"instance {instance.sop_instance_uid} is stored in {instance.transfer_syntax_uid}, which "
                f"Accept: {accept} does not take, and cannot be transcoded to what it asks for"
            )
        syntaxes.append(syntax)
    boundary = multipart.new_boundary()
    single = set(syntaxes)
    response = StreamingHttpResponse(
        multipart.stream(boundary, _instance_parts(request, found, syntaxes)),
        content_type=multipart.content_type(boundary, "application/dicom", single.pop() if len(single) == 1 else None),
    )
    return response


class Retrieve(base.DicomWebView):
    def get(self, request, study, series=None, sop=None):
        return retrieve(request, study, series, sop)


# Metadata


def _tag_path(path: list[int]) -> str:
    return "/".join(f"{p:08X}" if i % 2 == 0 else str(p) for i, p in enumerate(path))


def instance_metadata_json(request, instance) -> bytes:
    """The dicom+json of one instance's header, as UTF-8 text; BulkDataURIs to its bulkdata; NumberOfFrames always.

    From the metadata cache (metacache) while the stored file has not changed; an
    instance whose rewrite is pending (``rewrite.mark_pending``) from its corrected file,
    never cached: the entry would carry the old file's stamp and outlive the correction.
    """
    url = base.instance_url(
        request,
        instance.series.study.study_instance_uid,
        instance.series.series_instance_uid,
        instance.sop_instance_uid,
    )
    path = base.path_of(instance)
    corrected = _corrected(instance)
    if corrected is not None:
        slot = uuid.uuid4().hex
        cut = metacache.fragments_of(_build_metadata(instance, corrected, slot), slot)
    else:
        cut = metacache.fragments(instance.file_path, str(path), lambda slot: _build_metadata(instance, path, slot))
    return url.encode().join(cut)


def _build_metadata(instance, path, url: str) -> dict:
    """``path``: the stored file, or a whole file in memory."""
    header = dicomfile.read_header(path)
    out = formatter.dataset(header.ds, lambda tags: f"{url}/bulkdata/{_tag_path(tags)}")
    if header.pixel_tag is not None:  # the reader stopped before it: referenced, never read
        tag = formatter.tag_key(header.pixel_tag)
        out[tag] = {"vr": _pixel_vr(header), "BulkDataURI": f"{url}/bulkdata/{tag}"}
    if "00280008" not in out:
        out["00280008"] = {"vr": "IS", "Value": [instance.number_of_frames or 1]}
    # The transfer syntax the pixel data's BulkDataURI and frames come in (as stored).
    out["00020010"] = {"vr": "UI", "Value": [instance.transfer_syntax_uid]}
    return dict(sorted(out.items()))


def _pixel_vr(header) -> str:
    if header.pixel_tag == 0x7FE00008:
        return "OF"
    if header.pixel_tag == 0x7FE00009:
        return "OD"
    bits = header.ds.get("BitsAllocated") or 16
    compressed = header.pixel_length == dicomfile.UNDEFINED_LENGTH
    return "OB" if compressed or int(bits) <= 8 else "OW"


def _metadata_chunks(request, found):
    yield b"["
    for i, instance in enumerate(found):
        try:
            item = instance_metadata_json(request, instance)
        except (dicomfile.Unreadable, OSError) as exc:
            log.warning("WADO-RS metadata: %s left out: %s", instance.file_path, exc)
            continue
        yield (b"," if i else b"") + item
    yield b"]"


def metadata(request, study, series=None, sop=None):
    accept = request.headers.get("Accept")
    if not any(
        multipart.matches(base.DICOM_JSON, r.type) or r.type == "application/json"
        for r in multipart.parse_accept(accept)
    ):
        raise base.not_acceptable(accept, base.DICOM_JSON)
    found = rewrite.mark_pending(base.instances(study, series, sop, fields=_METADATA_FIELDS))
    base.record(request, study, base.Action.WADO_METADATA)
    return StreamingHttpResponse(_metadata_chunks(request, found), content_type=base.DICOM_JSON)


# What the metadata of an instance needs of its row (the rest of the header comes from its file).
_METADATA_FIELDS = ("sop_instance_uid", "file_path", "number_of_frames", "transfer_syntax_uid")


class Metadata(base.DicomWebView):
    def get(self, request, study, series=None, sop=None):
        return metadata(request, study, series, sop)


# Bulk data


def _parse_tag_path(text: str) -> list[int]:
    parts = [p for p in text.split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise base.BadRequest(f"bulk data path {text!r} is not tag[/item/tag...]")
    path = []
    for i, part in enumerate(parts):
        try:
            path.append(int(part, 16) if i % 2 == 0 else int(part))
        except ValueError as exc:
            what = "tag" if i % 2 == 0 else "item number"
            raise base.BadRequest(f"bulk data path {text!r}: {part!r} is not a {what}") from exc
        if i % 2 == 0 and len(part) != 8:
            raise base.BadRequest(f"bulk data path {text!r}: tags are 8 hex digits")
    return path


class BulkData(base.DicomWebView):
    """One large value by its BulkDataURI: pixel data as frames, anything else as octet-stream."""

    def get(self, request, study, series, sop, tagpath):
        path = _parse_tag_path(tagpath)
        [instance] = base.instances(study, series, sop)
        base.record(request, study, base.Action.WADO_BULKDATA)
        if path in ([0x7FE00010], [0x7FE00008], [0x7FE00009]):
            count = instance.number_of_frames or 1
            # The pixel data of a file is its frames.
            return frames.frames_response(request, instance, list(range(1, count + 1)))
        accept = request.headers.get("Accept")
        if not any(
            multipart.matches("multipart/related", r.type)
            and (r.part_type is None or multipart.matches("application/octet-stream", r.part_type))
            for r in multipart.parse_accept(accept)
        ):
            raise base.not_acceptable(accept, 'multipart/related; type="application/octet-stream"')
        file = base.stored_file(instance)
        try:
            dicomfile.check_inflated_size(file)  # pydicom inflates a deflated file whole: no bombs
        except dicomfile.Unreadable as exc:
            raise base.NotFound(f"the stored file cannot be read: {exc}") from exc
        ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
        value = _walk(ds, path)
        boundary = multipart.new_boundary()
        part = multipart.Part("application/octet-stream", [value])
        return StreamingHttpResponse(
            multipart.stream(boundary, [part]),
            content_type=multipart.content_type(boundary, "application/octet-stream"),
        )


def _walk(ds, path: list[int]) -> bytes:
    try:
        for i in range(0, len(path) - 1, 2):
            ds = ds[path[i]].value[path[i + 1]]
        element = ds[path[-1]]
    except (KeyError, IndexError, TypeError) as exc:
        raise base.NotFound(f"the instance has no value at {_tag_path(path)}") from exc
    value = element.value
    if isinstance(value, bytes):
        return value
    raise base.NotFound(f"{_tag_path(path)} is not a bulk data value")
