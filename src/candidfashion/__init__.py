"""CandidFashion: shop the look from any photo."""

__version__ = "0.1.0"
