from leukoedge.cli import run

run()
