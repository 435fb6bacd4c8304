"""Readers for scan formats beyond plain images (DICOM)."""
