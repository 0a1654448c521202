"""The source schema: its model, its readers (a schema file, the source's
``information_schema``), the write hazards it implies, and its history along
the log. Translation asks it; it never asks translation."""
