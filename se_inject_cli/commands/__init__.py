"""One module a sub-command of ``se-inject`` (see :data:`se_inject_cli.app.COMMANDS`)."""
