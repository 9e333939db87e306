"""The headless command line, ``moe-studio SUBCOMMAND``: ``main`` parses the arguments and imports
only the module of the subcommand that runs (``inspect``, ``catalog``, ``plan``, ``launch``,
``export``, ``hw``)."""
