"""Input and output: storage (local or object store, atomic publish, stable hashes), STAC catalogs, public
data files, country configs and outlines, openEO cubes."""
