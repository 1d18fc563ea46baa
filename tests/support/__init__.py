"""Test helpers that need no running service, shared by unit, integration and e2e tests."""
