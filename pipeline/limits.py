"""Limits every stage shares."""

# Pillow's decompression-bomb threshold, which also caps what it will decode: larger images
# are refused from their header, before any pixel is decoded.
MAX_PIXELS = 89_478_485
