"""Modules shared by the step scripts in scripts/ (index I/O, config loading, atomic writes, paths).

Scripts put their own folder on sys.path (Python does that for `python scripts/x.py`), so they
import these as `from pipeline import ...`.
"""
