"""The application layer: subscriptions, middleware, dispatch. Imports the domain only."""
