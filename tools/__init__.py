"""detkit's command-line tools; installed as the package ``detkit_tools`` behind the ``detkit-*`` console scripts.

Each ``tools/<name>.py`` is also a script (``python tools/detect.py ...``) once detkit is importable.
"""
