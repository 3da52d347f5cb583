"""``{% load names %}{{ patient|person_name }}``: records.names.display_name for templates."""

from django import template

from records import names

register = template.Library()


@register.filter
def person_name(patient) -> str:
    """A patient's name in the active language's way (records/names.py); empty for no patient."""
    return names.display_name(patient) if patient else ""
