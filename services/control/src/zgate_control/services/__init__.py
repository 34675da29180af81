"""The logic under the API routers, one module per resource."""
