"""Values and pure computations: the season, bands, SCL masking, compositing, features, legends, the tile grid."""
