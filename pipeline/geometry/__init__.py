"""Class maps to regions and back: connected parts, polygons with holes, COCO RLE."""
