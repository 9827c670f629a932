//! Fuzz target bodies, shared by the cargo-fuzz targets and the corpus replay tests.
