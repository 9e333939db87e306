"""MoE Studio's Qt front end. Importing this package imports no Qt (the CLI starts through it)."""
