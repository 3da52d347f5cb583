"""Dates as Chinese PACS and RIS write them: 2026-12-01, 2026-12-01 14:05 (FORMAT_MODULE_PATH).

Django's own zh_Hans formats write 2026年12月1日; a radiology department reads
dates in lists and reports as YYYY-MM-DD, which also sorts and lines up in
columns. Everything else (input formats, first day of the week) is Django's.
"""

from django.conf.locale.zh_Hans.formats import *  # noqa: F403 - Django's zh_Hans formats, a few overridden below

DATE_FORMAT = "Y-m-d"  # 2026-12-01
TIME_FORMAT = "H:i"  # 14:05
DATETIME_FORMAT = "Y-m-d H:i"  # 2026-12-01 14:05
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
YEAR_MONTH_FORMAT = "Y年n月"  # the admin's date hierarchy: 2026年12月
MONTH_DAY_FORMAT = "n月j日"  # 12月1日
