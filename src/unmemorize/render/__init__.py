"""Presentation primitives shared by every report section: tables, figures, number formats."""
