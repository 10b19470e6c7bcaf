"""JSON Schemas of the seed-000 worker-protocol shapes (package data)."""
