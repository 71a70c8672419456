"""How good the labels are: reviewed labels read as truth, and runs evaluated against them."""
