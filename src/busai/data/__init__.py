"""Data layer: discover -> audit -> splits -> dataset."""
