"""One module per command, named after it; ``leukoedge.cli`` assembles them."""
