"""The OHIF Viewer under /ohif/: the prebuilt ``@ohif/app`` from npm, configured for our /dicomweb/.

``install.py`` unpacks the pinned package (``package.json``) into ``OHIF_DIR``;
``views.py`` serves it to Doctors and Administrators with our ``app-config.js``.
"""
