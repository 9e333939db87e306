"""Saved work: the profile file format (``schema``), upgrades of older files (``migrations``),
plans to and from profiles (``plans``), the profile library and autosave (``library``) and
exports to shell, .bat, llama-swap and router INI (``exports``)."""
