"""Deployment: the production topology run as local processes (the docker-compose twin)."""
