"""Small hexbus apps for ``hexbus check --app`` (tests/unit/test_check_app.py).

Why real modules and containers: ``check`` imports the app by ``module:attribute``
exactly as a user's CI step would; each module owns its ``checkapp.<module>.*`` event
types so the apps do not share wire names with each other or with other tests.
"""
