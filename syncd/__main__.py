from syncd.cli.core import run

run()
