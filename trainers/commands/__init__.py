"""se-inject sub-commands provided by the trainer (registered in ``se_inject.cli.COMMANDS``)."""
