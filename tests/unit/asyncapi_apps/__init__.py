"""Apps for ``hexbus asyncapi --app`` (tests/unit/test_asyncapi.py).

Why a real module and container: the command imports the app by ``module:attribute``
exactly as a user's CI step would. The event types are ``asyncapitest.*`` so they share
no wire name with other tests.
"""
