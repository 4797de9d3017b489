"""One module per command group; ``leukoedge.cli`` assembles them."""
