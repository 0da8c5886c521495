"""The stages of the product, one tile or one product each: cube, predict, mosaic (and its STAC item and
quicklook)."""
