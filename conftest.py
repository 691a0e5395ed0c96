# The conformance plugin is enabled here rather than through an entry point, so installing the
# package never changes how pytest behaves in other projects.
pytest_plugins = ["conformance.plugin"]
