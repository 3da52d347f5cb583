"""The API's pagination (REST_FRAMEWORK's DEFAULT_PAGINATION_CLASS), apart from the viewsets it serves.

A module of its own: DRF imports it while importing its generic views, before
records/api.py could be imported.
"""

from django.conf import settings
from rest_framework import pagination


class Pagination(pagination.PageNumberPagination):
    """``?page=2&page_size=50``; the sizes come from settings (API_PAGE_SIZE, API_MAX_PAGE_SIZE)."""

    page_size_query_param = "page_size"

    @property
    def page_size(self):
        return settings.API_PAGE_SIZE

    @property
    def max_page_size(self):
        return settings.API_MAX_PAGE_SIZE
