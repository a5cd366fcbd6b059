"""Test doubles of EXTERNAL services (LLM provider HTTP APIs). Never fakes of project code."""
