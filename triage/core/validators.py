"""Field validators of the core models."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError


def validate_regex(value: str) -> None:
    """Model field validator: admins get the regex error in the form instead of a routing failure later."""
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as err:
        raise ValidationError(f"Not a valid regular expression: {err}") from err
