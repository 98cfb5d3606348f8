"""The API's routers, one per resource (`router` in each module), included by `create_app`."""
