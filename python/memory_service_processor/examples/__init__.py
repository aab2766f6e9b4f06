"""The example processors of the repository's ``examples/`` folder, shipped inside the package so
that ``memory-service-processor demo`` and the README's snippets work from a plain install."""
