"""The project's own tests drive the plugin through real pytest runs (pytester)."""

pytest_plugins = ["pytester"]
