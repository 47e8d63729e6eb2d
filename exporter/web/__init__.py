"""The HTTP server: listener, auth, cross-origin guard, API, OpenAPI, pages, static assets."""
