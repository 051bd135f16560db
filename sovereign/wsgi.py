"""WSGI entry point for gunicorn: ``gunicorn sovereign.wsgi:app``.

Configuration comes from ``SOVEREIGN_*`` variables and the instance file.
"""

from sovereign import create_app

app = create_app()
