"""``python -m connector.cli``: the ``al-connector`` command without its entry point."""

from connector.cli.main import main

main(prog_name="al-connector")
