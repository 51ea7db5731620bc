"""Loaded with ``-p`` before pytest-django reads the settings: tests need no production secret."""

import os

os.environ.setdefault("TRIAGE_DEBUG", "1")
