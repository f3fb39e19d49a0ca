"""The ``ncood`` command line: one module per subcommand."""
