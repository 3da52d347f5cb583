"""DICOMweb (PS3.18): one module per service over one dicom+json formatter and one multipart writer.

``qido.py`` (search), ``wado.py`` (instances, metadata, bulk data), ``frames.py``,
``rendered.py``; ``formatter.py`` turns data sets and index rows into
application/dicom+json, ``multipart.py`` writes and negotiates multipart/related;
``base.py`` holds what every view shares (roles, UID checks, refusals).
"""
