"""Test helpers shipped with the plugin: local servers that stand in for real endpoints."""
