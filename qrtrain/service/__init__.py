"""`qrtrain serve`: the training service. Jobs run the CLI as their own processes; state is SQLite under the
artifact root; the artifact folders stay the source of truth for versions.

    qrtrain serve --root outputs --workers 1      # http://127.0.0.1:8765/ (dashboard), /docs (OpenAPI)
"""
